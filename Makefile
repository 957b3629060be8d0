# ctmapd: `make run` starts the daemon, `make test` runs every test tier, `make bench`
# measures against the C libbpf baseline. Each installs what it needs first.
SHELL := /bin/bash
ARGS ?=
BPF_ROOT ?= /sys/fs/bpf

.PHONY: all deps build run test bench bpffs clean

all: build

deps:
	@scripts/install-deps.sh

node_modules/.package-lock.json: package.json package-lock.json
	npm ci --no-audit --no-fund
	@touch $@

build: deps node_modules/.package-lock.json
	rm -rf dist && npx tsc -p tsconfig.json
	$(MAKE) -s -C bpf
	$(MAKE) -s -C bench/c

bpffs:
	@scripts/ensure-bpffs.sh $(BPF_ROOT)

run: build bpffs
	node bin/ctmapd $(ARGS)

test: build bpffs
	scripts/run-tests.sh

bench: build bpffs
	node dist/bench/run.js

clean:
	rm -rf dist
	$(MAKE) -s -C bpf clean
	$(MAKE) -s -C bench/c clean
