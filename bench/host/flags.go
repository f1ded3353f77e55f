package host

import "flag"

// Flags are the settings shared by the benchmark programs that run the llmedge binary.
type Flags struct {
	Out      string  // directory for the JSON report ("" writes nothing)
	LLMedge  string  // the llmedge binary; built when empty
	Runs     int     // runs, each with fresh servers
	MaxOther float64 // other processes' load (cores) above which a run is repeated
}

// Register defines -out, -llmedge, -runs and -max-other-load on the command line; report
// names the JSON file, runs says what a run is.
func (f *Flags) Register(report, runs string) {
	flag.StringVar(&f.Out, "out", "docs/bench", "directory for "+report+" ('' writes nothing)")
	flag.StringVar(&f.LLMedge, "llmedge", "", "llmedge binary (default: go build ./cmd/llmedge into a temporary directory)")
	flag.IntVar(&f.Runs, "runs", 3, runs)
	flag.Float64Var(&f.MaxOther, "max-other-load", 0.25, "a run during which other processes used more CPU than this (cores) is repeated, at most twice")
}
