package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/llmedge/llmedge/controlplane/config"
	"github.com/llmedge/llmedge/controlplane/usage"
)

// runUsage asks the control plane's /usage (the ledger lives there, whichever store it uses).
func runUsage(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) > 0 && args[0] == "export" {
		return runUsageExport(ctx, args[1:], stdout, stderr)
	}
	if len(args) > 0 && args[0] == "import" {
		return runUsageImport(ctx, args[1:], stdout, stderr)
	}
	fs := newFlags("usage", stderr)
	base := fs.String("url", envOr("LLMEDGE_STATUS_URL", "http://127.0.0.1:18080"), "control plane HTTP address (env LLMEDGE_STATUS_URL)")
	since := fs.String("since", "24h", "look-back window: a duration (90m, 24h) or days (30d)")
	by := fs.String("by", "", "group by, comma-separated: caller, tenant, upstream, model, region, route, day")
	asJSON := fs.Bool("json", false, "print the /usage JSON")
	asCSV := fs.Bool("csv", false, "print CSV")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: llmedge usage [flags]                              totals from the control plane's /usage")
		fmt.Fprintln(stderr, "       llmedge usage export --month YYYY-MM --tenant NAME  a tenant's records for the month, CSV")
		fmt.Fprintln(stderr, "       llmedge usage import --state-dir DIR FILE...         add the requests of Envoy's access log the ledger lacks")
		fs.PrintDefaults()
	}
	if err := parse(fs, args); err != nil {
		return err
	}
	if *asJSON && *asCSV {
		fmt.Fprintln(stderr, "--json and --csv: pick one")
		return errUsage
	}
	if _, err := usage.ParseSince(*since); err != nil {
		return fmt.Errorf("--since %w", err)
	}
	dims, err := usage.ParseBy(*by)
	if err != nil {
		return fmt.Errorf("--by %w", err)
	}
	q := url.Values{"since": {*since}}
	if *by != "" {
		q.Set("by", strings.Join(dims, ","))
	}
	if *asCSV {
		q.Set("format", "csv")
	}
	body, err := getUsage(ctx, *base, "/usage", q)
	if err != nil {
		return err
	}
	if *asJSON || *asCSV {
		_, err = stdout.Write(body)
		return err
	}
	var rep usage.Report
	if err := json.Unmarshal(body, &rep); err != nil {
		return fmt.Errorf("decode /usage: %w", err)
	}
	return printUsage(stdout, rep)
}

func runUsageExport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("usage export", stderr)
	base := fs.String("url", envOr("LLMEDGE_STATUS_URL", "http://127.0.0.1:18080"), "control plane HTTP address (env LLMEDGE_STATUS_URL)")
	month := fs.String("month", "", "the month to export, e.g. 2026-11 (UTC)")
	tenant := fs.String("tenant", "", "the tenant (callers.<name>.tenant)")
	if err := parse(fs, args); err != nil {
		return err
	}
	if _, _, err := usage.ParseMonth(*month); err != nil {
		return fmt.Errorf("--month %w", err)
	}
	if *tenant == "" {
		fmt.Fprintln(stderr, "--tenant is required")
		return errUsage
	}
	body, err := getUsage(ctx, *base, "/usage/export", url.Values{"month": {*month}, "tenant": {*tenant}})
	if err != nil {
		return err
	}
	_, err = stdout.Write(body)
	return err
}

func getUsage(ctx context.Context, base, path string, q url.Values) ([]byte, error) {
	ctx, cancel := context.WithTimeout(ctx, 60*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, strings.TrimSuffix(base, "/")+path+"?"+q.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, fmt.Errorf("reach the control plane: %w", err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error struct{ Message string } `json:"error"`
		}
		if json.Unmarshal(body, &e) == nil && e.Error.Message != "" {
			return nil, errors.New(e.Error.Message)
		}
		return nil, fmt.Errorf("%s: %s", path, resp.Status)
	}
	return body, nil
}

func printUsage(w io.Writer, rep usage.Report) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintf(w, "usage from %s to %s\n", rep.Since.Format(time.RFC3339), rep.Until.Format(time.RFC3339))
	head := append(append([]string{}, rep.By...), "requests", "input", "output", "cached", "reasoning", "cost", "unpriced")
	fmt.Fprintln(tw, strings.Join(head, "\t")+"\t")
	for _, t := range rep.Totals {
		row := make([]string, 0, len(head))
		for _, d := range rep.By {
			row = append(row, or(t.Group[d], "-"))
		}
		cost := "-"
		if t.Currency != "" {
			cost = strconv.FormatFloat(t.Cost, 'f', 4, 64) + " " + t.Currency
		}
		row = append(row, strconv.FormatInt(t.Requests, 10), strconv.FormatInt(t.InputTokens, 10), strconv.FormatInt(t.OutputTokens, 10),
			strconv.FormatInt(t.CachedTokens, 10), strconv.FormatInt(t.ReasoningTokens, 10), cost, strconv.FormatInt(t.PriceMissing, 10))
		fmt.Fprintln(tw, strings.Join(row, "\t")+"\t")
	}
	return tw.Flush()
}

func or(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// runUsageImport adds to the ledger the requests of Envoy's JSON access log (files, or -
// for standard input) that it does not hold: those a region served while the control
// plane was restarting, down or out of reach (docs/USAGE.md, "When the control plane was
// away"). It opens the ledger's store itself, as the control plane's routes YAML and state
// dir say, so it needs no control plane; records already stored are skipped.
func runUsageImport(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlags("usage import", stderr)
	cfgPath := fs.String("config", envOr("LLMEDGE_CONFIG", DefaultConfig), "the control plane's routes YAML file or directory (its usage section: store and prices)")
	stateDir := fs.String("state-dir", os.Getenv("LLMEDGE_STATE_DIR"), "the control plane's state dir (env LLMEDGE_STATE_DIR), where a relative usage.sqlite path lives")
	fs.Usage = func() {
		fmt.Fprintln(stderr, "usage: llmedge usage import [flags] FILE...   (- reads standard input)")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return err
		}
		return errUsage
	}
	files := fs.Args()
	if len(files) == 0 {
		fmt.Fprintln(stderr, "name at least one Envoy access log file (- for standard input)")
		return errUsage
	}
	_, cfg, err := load(*cfgPath)
	if err != nil {
		return fmt.Errorf("--config %s: %d problem(s); run llmedge validate", *cfgPath, len(config.AsErrors(err)))
	}
	u := cfg.Usage
	if !u.Enabled {
		return fmt.Errorf("--config %s: usage.enabled is false: there is no ledger to import into", *cfgPath)
	}
	if u.Store != "postgres" && *stateDir == "" && !filepath.IsAbs(u.SQLitePath) {
		return fmt.Errorf("--state-dir is required: the ledger's SQLite file %q is relative to the control plane's state dir", u.SQLitePath)
	}
	store, err := usage.OpenStore(ctx, u, *stateDir)
	if err != nil {
		return fmt.Errorf("open the ledger: %w", err)
	}
	defer store.Close()
	prices := usage.NewPrices(u.Prices)
	var st usage.ImportStats
	for _, name := range files {
		r := io.Reader(os.Stdin)
		if name != "-" {
			f, err := os.Open(name)
			if err != nil {
				return err
			}
			defer f.Close()
			r = f
		}
		if err := usage.ImportEnvoyLog(ctx, store, prices, name, r, &st); err != nil {
			return fmt.Errorf("%s: %w (records before this point were added)", name, err)
		}
	}
	for _, b := range st.Bad {
		fmt.Fprintln(stderr, "warning: "+b)
	}
	fmt.Fprintf(stdout, "%d lines: %d requests, %d added to the ledger, %d already in it; %d other lines, %d unreadable\n",
		st.Lines, st.Requests, st.Added, st.Requests-st.Added, st.Skipped, st.BadLines)
	if st.NoUsage > 0 {
		return fmt.Errorf("%d request line(s) carry no usage facts and were not imported: Envoy wrote them before usage.envoy_access_log: true was set in the routes YAML", st.NoUsage)
	}
	if st.BadLines > 0 {
		return fmt.Errorf("%d line(s) could not be read", st.BadLines)
	}
	return nil
}
