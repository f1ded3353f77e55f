package host

import (
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"time"
)

// Pct is the nearest-rank percentile q of ds (sorted or not).
func Pct(ds []time.Duration, q float64) time.Duration {
	if len(ds) == 0 {
		return 0
	}
	s := slices.Clone(ds)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// Ms and Us are d in milliseconds and microseconds.
func Ms(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
func Us(d time.Duration) float64 { return float64(d) / float64(time.Microsecond) }

// Median is the median of v (the mean of the middle two for an even count).
func Median(v []float64) float64 {
	if len(v) == 0 {
		return 0
	}
	s := slices.Clone(v)
	slices.Sort(s)
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func Round1(v float64) float64 { return math.Round(v*10) / 10 }
func Round3(v float64) float64 { return math.Round(v*1000) / 1000 }

// Medians returns, for every float64 field of T, the median of that field over runs,
// rounded to 3 decimals; other fields are left zero. One run per process is how every
// benchmark here reports, and the median over runs is what its tables show.
func Medians[T any](runs []T) T {
	var out T
	ov := reflect.ValueOf(&out).Elem()
	for i := range ov.NumField() {
		if ov.Field(i).Kind() != reflect.Float64 || !ov.Type().Field(i).IsExported() {
			continue
		}
		v := make([]float64, len(runs))
		for j, r := range runs {
			v[j] = reflect.ValueOf(r).Field(i).Float()
		}
		ov.Field(i).SetFloat(Round3(Median(v)))
	}
	return out
}

// WriteJSON writes v, indented, to dir/name; dir "" writes nothing.
func WriteJSON(dir, name string, v any) error {
	if dir == "" {
		return nil
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	path := filepath.Join(dir, name)
	fmt.Fprintf(os.Stderr, "wrote %s\n", path)
	return os.WriteFile(path, append(b, '\n'), 0o644)
}

// Repeat runs measure until the other processes' load it reports (in cores) is at most
// maxOther, at most three times, and returns the last result and how many runs it
// discarded as disturbed.
func Repeat[T any](maxOther float64, measure func() (T, float64, error)) (T, int, error) {
	for attempt := 1; ; attempt++ {
		res, other, err := measure()
		if err != nil || other <= maxOther || attempt == 3 {
			return res, attempt - 1, err
		}
		fmt.Fprintf(os.Stderr, "  other processes used %.2f cores during the run; repeating it\n", other)
	}
}

// ReplaceFile writes doc to a temporary file and renames it over path, as editors do:
// how the benchmarks edit a watched routes YAML.
func ReplaceFile(path string, doc []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, doc, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
