package stack

// LocalEnvoyConcurrency is the worker threads of each of `make run`'s Envoys. The
// benchmarks run their Envoys with it too, so they measure what users run.
const LocalEnvoyConcurrency = 2
