# rill: `make demo` runs the whole thing on a built-in demo; `make test` runs every test.
# Both install what they need first (script/setup-test-env.sh, idempotent, root).

SHELL    := /bin/bash
GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS  := -X main.version=$(VERSION)
BIN      := bin
PREFIX   ?= /usr/local/bin
# Every package but the end-to-end tests: unit, fuzz seeds, conformance (root: they mount).
UNIT_PKGS = $(shell $(GO) list ./... | grep -v '/test/')

.PHONY: all build test unit e2e demo setup install lint fmt clean

all: build

# The daemon and the CLI.
build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/rill-snapshotter ./cmd/rill-snapshotter
	$(GO) build -o $(BIN)/rill ./cmd/rill

setup:
	bash script/setup-test-env.sh

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { echo "gofmt needed:"; gofmt -l $$(git ls-files '*.go'); exit 1; }
	$(GO) vet ./...

# The whole suite: lint, unit and conformance (with the race detector), end-to-end.
test: setup lint
	$(GO) test -race -count=1 -timeout 20m $(UNIT_PKGS)
	$(GO) test -count=1 -timeout 40m ./test/...

unit:
	$(GO) test -race -count=1 $(UNIT_PKGS)

e2e: setup
	$(GO) test -count=1 -timeout 40m -v ./test/...

demo: setup
	$(GO) run ./test/cmd/demo

install: build
	PREFIX=$(PREFIX) bash script/install.sh $(BIN)/rill-snapshotter $(BIN)/rill

# rill install-node: install.sh's files plus rill's entries merged into containerd's config.
# INSTALL_NODE_FLAGS passes flags, e.g. make install-node INSTALL_NODE_FLAGS="--dry-run".
.PHONY: install-node
install-node: build
	$(BIN)/rill install-node --from $(BIN) --bin-dir $(PREFIX) $(INSTALL_NODE_FLAGS)

fmt:
	gofmt -w $$(git ls-files '*.go')

clean:
	rm -rf $(BIN)

# The time-to-ready benchmark over an emulated 100 Mbit/s, 20 ms link (script/bench; root):
# containerd's full pull, stargz-snapshotter v0.18.2 (eStargz, and optimized eStargz; its daemon
# built from script/bench/stargz) and rill, side by side. BENCH_FLAGS passes flags, e.g.
# make bench BENCH_FLAGS="--workloads python --runs 1 --modes full,stargz,stargz-opt,rill,rill-profile".
.PHONY: bench
bench: setup
	$(GO) run ./script/bench $(BENCH_FLAGS)

# The micro-benchmarks of issue #5 (test/perf: cold random and sequential reads, warm reads
# and start time versus overlayfs, memory with 50 layers) over an emulated 100 Mbit/s, 20 ms
# link (root; a few minutes). BENCHTIME sets -benchtime, BENCH_RUN selects, e.g.
# make bench-micro BENCH_RUN=ColdRandom BENCHTIME=100x.
BENCHTIME ?= 5s
BENCH_RUN ?= .
.PHONY: bench-micro
bench-micro: setup
	$(GO) test -run '^$$' -bench '$(BENCH_RUN)' -benchtime $(BENCHTIME) -timeout 60m ./test/perf/
