# devstatus — the index of tasks. `make` (or `make help`) lists them.
#
# Postgres: targets that need one use $DATABASE_URL when it is set; otherwise they start a private
# local cluster with deploy/pg-local.sh (run: 127.0.0.1:5433 db devstatus, data ./data/postgres;
# tests: 127.0.0.1:5434 db devstatus_test, data ./.pgdata/test). `make pg-stop` stops both.

SHELL := /bin/bash
.DEFAULT_GOAL := help

GO            ?= go
PKGS          ?= ./...
ARGS          ?=
TEST_TIMEOUT  ?= 20m
FUZZTIME      ?= 10s
TEST_FUZZTIME ?= 5s
# make bench: the micro-benchmarks of docs/performance.md (BENCH=. runs every benchmark of BENCH_PKGS).
BENCH         ?= BenchmarkApply|BenchmarkPartition|BenchmarkSnapshotRestore|BenchmarkDecodeInput|BenchmarkDecodeHeartbeat|BenchmarkEncodeHeartbeatEvent|BenchmarkLimiter1M|BenchmarkRateWindowID|BenchmarkLivenessDecode|BenchmarkLivenessBatch|BenchmarkTransitionsBatch
BENCH_PKGS    ?= ./events ./pkg/statemachine ./pkg/worker ./pkg/bridge ./projections
BENCH_TIME    ?= 300ms
BENCH_E2E     ?= 1
# golangci-lint, pinned: built once from the Go module proxy (go install, about a minute) into
# GOLANGCI_LINT_BIN, named with its version and shared by every checkout on the machine, then reused.
# GOLANGCI=0 skips it (gofmt + go vet only); GOLANGCI_LINT_BIN=/path uses a binary of your own.
GOLANGCI              ?= 1
GOLANGCI_LINT_VERSION ?= v2.15.0
GOLANGCI_LINT_BIN     ?= $(firstword $(subst :, ,$(shell $(GO) env GOPATH)))/bin/golangci-lint-$(GOLANGCI_LINT_VERSION)

# Go files of the repository: tracked and new-but-not-ignored (skips ./data, ./.pgdata, ./bin).
GO_FILES = git ls-files -co --exclude-standard -- '*.go' | while IFS= read -r f; do [ -f "$$f" ] && printf '%s\n' "$$f"; done

.PHONY: help run build migrate test test-replay test-browser test-race test-short bench bench-full bench-sync bench-profile fuzz lint fmt pg-start pg-stop pg-status pg-test-note nats-up nats-down clean

help: ## list the targets
	@echo "usage: make TARGET [VAR=value ...]"
	@echo
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo
	@echo "variables: ARGS (extra flags for run), PKGS (default ./...), FUZZTIME (default 10s per target),"
	@echo "           TEST_FUZZTIME (fuzz time per target inside 'make test', default 5s), BENCH (regexp),"
	@echo "           BENCH_E2E=0 (micro-benchmarks only), BENCH_* of scripts/bench-e2e.sh (BENCH_GOGC, BENCH_ARGS …),"
	@echo "           GOLANGCI=0 (lint without golangci-lint), DATABASE_URL (use this Postgres, start none)"

run: ## run the service: local Postgres (unless DATABASE_URL is set), migrate, `devstatus serve` with embedded NATS in ./data; ARGS=flags
	@exec deploy/run-local.sh $(ARGS)

build: ## build every binary of cmd/ into ./bin
	@mkdir -p bin
	@if compgen -G 'cmd/*/*.go' >/dev/null; then echo "$(GO) build -o bin/ ./cmd/..."; $(GO) build -o bin/ ./cmd/...; else echo "build: no binaries under cmd/ yet"; fi

migrate: ## apply the Postgres schema (devstatus migrate) to DATABASE_URL or the local Postgres
	deploy/with-pg.sh $(GO) run ./cmd/devstatus migrate

test: ## race tests against the test Postgres (started when DATABASE_URL is unset), the trace replays and the browser test without -race, then every fuzz target for TEST_FUZZTIME
	deploy/with-pg.sh --test $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(PKGS)
	@$(MAKE) --no-print-directory test-replay
	@$(MAKE) --no-print-directory fuzz FUZZTIME=$(TEST_FUZZTIME)
	@$(MAKE) --no-print-directory pg-test-note

test-replay: ## the whole-day virtual-time replay and the live HTTP replay of the Grid'5000 trace, and the check of the excerpt against the full trace (DEVSTATUS_TRACE), without -race (too slow under it)
	deploy/with-pg.sh --test $(GO) test -count=1 -timeout 30m -run 'TestReplayTrace|TestExcerptMatchesFullTrace' -v ./e2e ./pkg/trace 2>&1 | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|(replay|trace)_test.go'; exit $${PIPESTATUS[0]}

test-browser: ## the dashboard's browser test (headless chromium) without -race (too slow under it); DEVSTATUS_SCREENSHOTS=$$PWD/docs refreshes the screenshots
	deploy/with-pg.sh --test $(GO) test -count=1 -timeout 10m -run 'TestBrowser' -v ./web 2>&1 | grep -E '^(=== RUN|--- |PASS|FAIL|ok|panic)|browser_test.go'; exit $${PIPESTATUS[0]}

test-race: ## race tests only (no fuzz)
	deploy/with-pg.sh --test $(GO) test -race -count=1 -timeout $(TEST_TIMEOUT) $(PKGS)

test-short: ## quick tests (-short: integration tests skip themselves), no race detector
	deploy/with-pg.sh --test $(GO) test -short -count=1 $(PKGS)

bench: ## micro-benchmarks (BENCH=regexp, default the set of docs/performance.md), then a short end-to-end load run (< 5 min; BENCH_E2E=0 skips it); results in data/bench/latest
	@mkdir -p data/bench
	set -o pipefail; deploy/with-pg.sh --test $(GO) test -run '^$$' -bench '$(BENCH)' -benchmem -benchtime $(BENCH_TIME) $(BENCH_PKGS) | tee data/bench/micro.txt
ifneq ($(BENCH_E2E),0)
	BENCH_MODE=short scripts/bench-e2e.sh
endif

bench-full: ## the end-to-end load run with 1 000 000 devices: gateway batches at 33 000/s for 10 min, worker restart (~35 min)
	BENCH_MODE=full scripts/bench-e2e.sh

bench-sync: ## the end-to-end load run with --sync always (fsync before every PubAck): single heartbeats and gateway batches
	BENCH_SYNC=always scripts/bench-e2e.sh

bench-profile: ## the short load run on a profiling build: CPU, allocation and mutex profiles of the service and the worker next to the report
	BENCH_PPROF=1 scripts/bench-e2e.sh

fuzz: ## run each Fuzz* target for FUZZTIME (go test -fuzz takes one target of one package at a time)
	deploy/with-pg.sh --test scripts/fuzz.sh $(FUZZTIME)

lint: $(if $(filter 0,$(GOLANGCI)),,$(GOLANGCI_LINT_BIN)) ## gofmt check, go vet, golangci-lint (config .golangci.yml)
	@echo "gofmt -l"; out=$$($(GO_FILES) | xargs -r gofmt -l); if [ -n "$$out" ]; then echo "not gofmt'ed (run make fmt):"; echo "$$out"; exit 1; fi
	$(GO) vet $(PKGS)
ifneq ($(GOLANGCI),0)
	$(GOLANGCI_LINT_BIN) run --config .golangci.yml $(PKGS)
endif

# The pinned golangci-lint, built into a temporary name and renamed, so that two checkouts
# building it at once never run a half-written binary.
$(GOLANGCI_LINT_BIN):
	@echo "building golangci-lint $(GOLANGCI_LINT_VERSION) into $@ (once)"
	@mkdir -p "$(@D)"
	@tmp=$$(mktemp -d "$(@D)/.golangci-lint.XXXXXX") && \
	GOBIN="$$tmp" $(GO) install github.com/golangci/golangci-lint/v2/cmd/golangci-lint@$(GOLANGCI_LINT_VERSION) && \
	mv -f "$$tmp/golangci-lint" "$@"; rc=$$?; rm -rf "$$tmp"; exit $$rc

fmt: ## gofmt -w every Go file
	@$(GO_FILES) | xargs -r gofmt -l -w

pg-start: ## start the local Postgres for run (prints DATABASE_URL=...)
	@deploy/pg-local.sh start

pg-stop: ## stop the local Postgres clusters (run and test)
	@deploy/pg-local.sh stop
	@deploy/pg-local.sh --test stop

# After make test: say that the test Postgres it started is still running, and how to stop it.
pg-test-note:
	@if [ -z "$$DATABASE_URL" ] && deploy/pg-local.sh --test status >/dev/null 2>&1; then \
		echo "make test: the test Postgres it started is still running ($$(deploy/pg-local.sh --test url)); 'make pg-stop' stops it"; fi

pg-status: ## show the local Postgres clusters
	@deploy/pg-local.sh status || true
	@deploy/pg-local.sh --test status || true

nats-up: ## start the 3-node NATS JetStream cluster of deploy/nats on 127.0.0.1:4222-4224
	@deploy/nats/cluster.sh start

nats-down: ## stop that cluster
	@deploy/nats/cluster.sh stop

clean: ## remove ./bin (leaves ./data and the Postgres clusters alone)
	rm -rf bin
