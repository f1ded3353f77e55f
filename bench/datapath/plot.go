package main

import (
	"fmt"
	"image/color"
	"math"
	"slices"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// plotRow is one bar pair of the plot.
type plotRow struct {
	label     string
	p50, p99  float64
	published bool
}

// plotLo is the left end of the log axis, in µs.
const plotLo = 10.0

var (
	blue   = color.RGBA{R: 31, G: 119, B: 180, A: 255}
	orange = color.RGBA{R: 255, G: 127, B: 14, A: 255}
	grey50 = color.RGBA{R: 170, G: 170, B: 170, A: 255}
	grey99 = color.RGBA{R: 120, G: 120, B: 120, A: 255}
)

// writePlot draws added p50 and p99 at concurrency 1 per scenario and peer, on a log axis,
// with the published figures in grey and the targets as dashed lines.
func writePlot(path string, res *Results) error {
	rows := plotRows(res)
	p := plot.New()
	p.Title.Text = "Added latency at concurrency 1 (vs direct to the fake), log scale"
	p.X.Label.Text = "added latency (µs)"
	p.X.Scale = plot.LogScale{}
	hi := 10000.0
	for _, r := range rows {
		hi = math.Max(hi, r.p99*2.5)
	}
	p.X.Min, p.X.Max = plotLo, hi
	var ticks []plot.Tick
	for _, v := range []float64{10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000} {
		if v <= hi {
			ticks = append(ticks, plot.Tick{Value: v, Label: fmtTick(v)})
		}
	}
	p.X.Tick.Marker = plot.ConstantTicks(ticks)
	leg50, leg99, err := plotBars(p, rows)
	if err != nil {
		return err
	}
	if err := plotTargets(p, len(rows)); err != nil {
		return err
	}
	if leg50 != nil {
		p.Legend.Add("added p50 (this run)", leg50)
	}
	if leg99 != nil {
		p.Legend.Add("added p99 (this run)", leg99)
	}
	p.Legend.Top = true
	p.Legend.Left = false
	var names []string
	for _, r := range rows {
		names = append(names, r.label)
	}
	p.NominalY(names...)
	p.Y.Min, p.Y.Max = -0.6, float64(len(rows))-0.4
	return p.Save(10*vg.Inch, vg.Length(1.1+0.42*float64(len(rows)))*vg.Inch, path)
}

// plotRows are the measured scenarios and peers, then the published figures, bottom up.
func plotRows(res *Results) []plotRow {
	var rows []plotRow
	for _, s := range res.Scenarios {
		if s.Name == "direct" || s.Error != "" || len(s.Latency) == 0 {
			continue
		}
		label := s.Label
		if s.Kind == "peer" {
			label += " (this run)"
		}
		rows = append(rows, plotRow{label: label, p50: s.AddedP50, p99: s.AddedP99})
	}
	for _, p := range published {
		rows = append(rows, plotRow{label: "published: " + p.Name, p50: p.P50, p99: p.P99, published: true})
	}
	// Top to bottom in the order above.
	slices.Reverse(rows)
	return rows
}

// plotBars adds a p50 bar (when known) and a p99 bar per row, each labelled; it returns a
// bar of each measured kind for the legend.
func plotBars(p *plot.Plot, rows []plotRow) (leg50, leg99 *plotter.Polygon, err error) {
	var lbl plotter.XYLabels
	for i, r := range rows {
		c50, c99 := blue, orange
		if r.published {
			c50, c99 = grey50, grey99
		}
		for _, b := range []struct {
			v, y float64
			c    color.Color
			name string
			leg  **plotter.Polygon
		}{{r.p50, float64(i) + 0.19, c50, "p50 ", &leg50}, {r.p99, float64(i) - 0.19, c99, "p99 ", &leg99}} {
			if b.v == 0 && b.name == "p50 " {
				continue
			}
			x := math.Max(b.v, plotLo*1.01)
			poly, err := plotter.NewPolygon(plotter.XYs{{X: plotLo, Y: b.y - 0.17}, {X: x, Y: b.y - 0.17}, {X: x, Y: b.y + 0.17}, {X: plotLo, Y: b.y + 0.17}})
			if err != nil {
				return nil, nil, err
			}
			poly.Color = b.c
			poly.LineStyle.Width = 0
			p.Add(poly)
			if !r.published {
				*b.leg = poly
			}
			lbl.XYs = append(lbl.XYs, plotter.XY{X: math.Max(b.v, plotLo) * 1.05, Y: b.y})
			lbl.Labels = append(lbl.Labels, b.name+fmtAdded(b.v))
		}
	}
	labels, err := plotter.NewLabels(lbl)
	if err != nil {
		return nil, nil, err
	}
	for i := range labels.TextStyle {
		labels.TextStyle[i].Font.Size = vg.Points(7)
		labels.TextStyle[i].YAlign = draw.YCenter
	}
	p.Add(labels)
	return leg50, leg99, nil
}

// plotTargets draws the targets as dashed vertical lines over rows rows.
func plotTargets(p *plot.Plot, rows int) error {
	for _, t := range []struct {
		v    float64
		name string
		dash []vg.Length
	}{{targetP50, "target p50 0.5 ms", []vg.Length{vg.Points(4), vg.Points(3)}}, {targetP99, "target p99 1 ms", []vg.Length{vg.Points(1), vg.Points(2)}}} {
		line, err := plotter.NewLine(plotter.XYs{{X: t.v, Y: -0.6}, {X: t.v, Y: float64(rows) - 0.4}})
		if err != nil {
			return err
		}
		line.LineStyle.Dashes = t.dash
		line.LineStyle.Width = vg.Points(1)
		p.Add(line)
		p.Legend.Add(t.name, line)
	}
	return nil
}

func fmtTick(v float64) string {
	if v >= 1000 {
		return fmt.Sprintf("%g ms", v/1000)
	}
	return fmt.Sprintf("%g µs", v)
}
