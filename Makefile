# llmedge — the Makefile is the interface: CI and the README call only these targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

GO       ?= go
TOOLS    := $(CURDIR)/.tools
BIN      := $(CURDIR)/bin
export LLMEDGE_TOOLS := $(TOOLS)

.PHONY: help
help: ## List the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "}; {printf "  \033[36m%-14s\033[0m %s\n", $$1, $$2}'

.PHONY: tools
tools: ## Install Envoy 1.40, envoyproxy/ratelimit, redis-server, protoc and the test SDKs into .tools/ (idempotent)
	@bash scripts/tools.sh

.PHONY: proto
proto: ## Regenerate the Go code for proto/**/*.proto (protoc from make tools; make test checks drift)
	@bash scripts/proto.sh

.PHONY: build
build: ## Build the llmedge, fakellm and llmedge-run binaries and Envoy's module libllmedge.so into bin/
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/llmedge ./cmd/llmedge
	$(GO) build -o $(BIN)/fakellm ./cmd/fakellm
	$(GO) build -o $(BIN)/llmedge-run ./cmd/llmedge-run
	@# extauthz as an Envoy dynamic module (extauthz_in_envoy): cgo, gcc from make tools.
	CGO_ENABLED=1 $(GO) build -buildmode=c-shared -o $(BIN)/libllmedge.so ./extauthz/module
	@rm -f $(BIN)/libllmedge.h

.PHONY: fmt
fmt: ## Format the Go code
	gofmt -w $$(git ls-files '*.go' | grep -v '\.pb\.')

.PHONY: lint
lint: ## gofmt check and go vet
	@out=$$(gofmt -l $$(git ls-files '*.go' | grep -v '\.pb\.')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...

.PHONY: test
test: tools lint ## Unit, golden and end-to-end tests against the real Envoy (runs make tools first)
	$(GO) test -count=1 -timeout 30m ./...
	@# The end-to-end suite again with every region's extauthz inside its Envoy (extauthz_in_envoy).
	LLMEDGE_E2E_AUTHZ=envoy $(GO) test -count=1 -timeout 30m ./e2e/

.PHONY: golden
golden: ## Rewrite the golden files (translator output, Envoy bootstraps) from the current code
	$(GO) test ./controlplane/translate/ ./controlplane/bootstrap/ ./controlplane/config/ -run 'Golden|Bootstrap' -update

.PHONY: run
run: tools build ## Start a local two-region edge (hk, sg) with the fake LLM upstream
	@$(BIN)/llmedge-run

.PHONY: bench
bench: tools build ## Benchmarks (not part of make test); results go to docs/BENCHMARKS.md
	@mkdir -p $(BIN)
	set -o pipefail; { \
	  $(GO) test -run '^$$' -bench . -benchmem -count 5 -timeout 30m ./controlplane/xds/ && \
	  $(GO) test -run '^$$' -bench . -benchmem -benchtime 30x -count 5 -timeout 30m ./e2e/; \
	} 2>&1 | tee $(BIN)/bench.txt
	@echo "raw results: $(BIN)/bench.txt (summarise: go run golang.org/x/perf/cmd/benchstat@latest $(BIN)/bench.txt)"
	@# Data path: edge vs direct vs peers on loopback (~13 min on a quiet machine), then the full edge at
	@# 1,000 requests/s for 10 min with every process's RSS after each 30 s step; writes
	@# docs/bench/datapath.{md,json,png} and docs/bench/soak.{md,json}.
	bash bench/peers/install.sh
	$(GO) run ./bench/datapath -out docs/bench -soak 10m
	@# What Envoy pays for each of the edge's filters and logs: bare Envoy beside one copy of itself per
	@# filter or log left out, all at once, measured in alternating windows (~5 min); writes
	@# docs/bench/ablation.{md,json}.
	$(GO) run ./bench/datapath -ablation -out docs/bench
	@# Control-plane scale: the real llmedge controlplane, 1,000 routes / 5 regions, 100 and 1,000
	@# simulated ADS clients (~5 min); writes docs/bench/controlplane.json (reading: controlplane.md).
	$(GO) run ./bench/controlplane -llmedge $(BIN)/llmedge -runs 5 -out docs/bench
	@# ext_authz Check path: go test benchmarks, then the real llmedge extauthz (GOMAXPROCS=1) over
	@# loopback gRPC (~2 min); writes docs/bench/authz.json (reading: authz.md).
	$(GO) run ./bench/authz -llmedge $(BIN)/llmedge -runs 5 -out docs/bench
	@# One side call through the real Envoy by transport (router only; ext_authz over gRPC, with and
	@# without gRPC-Go's BDP pings; over HTTP), servers answering at once (~2 min); writes docs/bench/hop.{json,md}.
	$(GO) run ./bench/hop -fakellm $(BIN)/fakellm -out docs/bench
	@# Usage ledger ingest: the real control plane's access log service fed like Envoy at 2,000 to 32,000
	@# records/s into SQLite and a real PostgreSQL (~3 min); writes docs/bench/usage.{json,md}.
	$(GO) run ./bench/usage -llmedge $(BIN)/llmedge -out docs/bench
