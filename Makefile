# adflow — one binary, two set-up commands: `make demo` and `make test`.
SHELL := /bin/bash
CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target
BIN := $(CARGO_TARGET_DIR)/release/adflow
DEMO_DIR ?= demo-data
WORKERS ?= 2

.PHONY: build demo demo-kdniao test bench fmt lint services-up services-down clean

build:
	$(CARGO) build --release -p adflow-cli

## demo: generate a data set, run the main job on it (file mode, no servers), show what it found.
demo: build
	$(BIN) generate --output $(DEMO_DIR)/input --seed 7 --users 2000 --days 7
	$(BIN) run --input $(DEMO_DIR)/input --output $(DEMO_DIR)/out --workers $(WORKERS)
	$(BIN) report --output $(DEMO_DIR)/out

## demo-kdniao: the same, with logistics coming through the Kdniao connector: a stand-in Kdniao
## server pushes the data set's track sequences to `adflow kdniao receive` (two local processes,
## stopped at the end); then run + report, and a comparison with the file run.
demo-kdniao: build
	BIN=$(BIN) WORKERS=$(WORKERS) bash scripts/demo-kdniao.sh

## test: install and start the test services (ClickHouse, Redis, tansu), run every test, stop them.
test:
	bash scripts/test.sh

## bench: file-mode throughput and memory benchmark; see bench/RESULTS.md.
bench: build
	bash bench/run.sh

fmt:
	$(CARGO) fmt --all

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

services-up:
	bash scripts/services/clickhouse.sh start
	bash scripts/services/redis.sh start
	bash scripts/services/tansu.sh install
	bash scripts/services/tansu.sh start

services-down:
	-bash scripts/services/tansu.sh stop
	-bash scripts/services/clickhouse.sh stop
	-bash scripts/services/redis.sh stop

clean:
	rm -rf $(DEMO_DIR)
