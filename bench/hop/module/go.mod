module github.com/llmedge/llmedge/bench/hop/module

go 1.26.0
