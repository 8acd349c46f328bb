# paylake: `make bronze silver gold` runs the pipeline on data/ into lake/; `make test` runs every test.
CARGO ?= cargo
export CARGO_TARGET_DIR ?= $(CURDIR)/target
BIN := $(CARGO_TARGET_DIR)/release/paylake
LAKE ?= lake
LANDING ?= data
SEED ?= ../shared/seed-sample

VENV ?= $(HOME)/.cache/paylake/venv
PYTHON_READERS := deltalake polars "duckdb==1.5.5" duckdb-extension-delta pyarrow pytest

.PHONY: all build bronze silver gold test lint clean export bench bench-incremental promtool interop-test venv fuzz chaos \
	airflow-test flight-test flight-venv repl-test serve s3-test cluster-test

# The make targets always exit 0 when there is nothing new, whatever the caller's environment.
unexport PAYLAKE_NOTHING_NEW_EXIT_CODE

all: bronze silver gold

# `cargo test --no-run` builds the binary too, with the same dependency features as the tests:
# a plain `cargo build` resolves some features differently and would compile DataFusion twice.
build:
	$(CARGO) test --release --workspace --no-run

$(BIN): build

bronze: build
	$(BIN) --lake $(LAKE) bronze --landing $(LANDING)

silver: build
	$(BIN) --lake $(LAKE) silver

gold: build
	$(BIN) --lake $(LAKE) gold

export: build
	$(BIN) --lake $(LAKE) export gold.unified_payments --format csv --output unified_table.csv

# promtool (Debian package prometheus) checks the metrics file and alert rules in the tests.
promtool:
	@command -v promtool >/dev/null 2>&1 || { apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }

# One optimised build serves the binary and the tests, so DataFusion compiles once.
test: promtool
	PAYLAKE_SEED_SAMPLE=$(abspath $(SEED)) $(CARGO) test --release --workspace
	$(MAKE) interop-test
	$(MAKE) repl-test
	$(MAKE) flight-test
	$(MAKE) airflow-test
	$(MAKE) s3-test
	$(MAKE) cluster-test
	$(MAKE) chaos

# Python readers of the lake (deltalake, Polars, DuckDB 1.5.5 with its offline delta extension).
$(VENV)/.installed:
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install -q $(PYTHON_READERS)
	touch $@

venv: $(VENV)/.installed

# The lake read as Delta by other engines, concurrent readers and killed writers.
interop-test: build venv
	PAYLAKE_BIN=$(BIN) $(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/interop

# The interactive `paylake sql` driven through a pseudo-terminal (Python's pty module).
repl-test: build venv
	PAYLAKE_BIN=$(BIN) $(VENV)/bin/python -m pytest -q -p no:cacheprovider tests/repl

# `paylake serve` read by ADBC's Flight SQL driver, in a venv of its own (pyarrow + ADBC).
FLIGHT_VENV ?= $(HOME)/.cache/paylake/flight-venv
PYTHON_FLIGHT := "adbc-driver-flightsql>=1,<2" "adbc-driver-manager>=1,<2" pyarrow pytest

$(FLIGHT_VENV)/.installed:
	python3 -m venv $(FLIGHT_VENV)
	$(FLIGHT_VENV)/bin/pip install -q $(PYTHON_FLIGHT)
	touch $@

flight-venv: $(FLIGHT_VENV)/.installed

flight-test: build flight-venv
	PAYLAKE_BIN=$(BIN) $(FLIGHT_VENV)/bin/python -m pytest -q -p no:cacheprovider tests/flight

# The lake over Arrow Flight SQL on 127.0.0.1:50051 (PAYLAKE_BIND, PAYLAKE_TOKEN).
serve: build
	$(BIN) --lake $(LAKE) serve

# The DAGs in airflow/dags under real Airflow 3 (`airflow dags test` on temporary lakes: a clean
# run, nothing new, a failed Silver gate, maintenance). tests/airflow/run.sh creates its own venv
# once ($(HOME)/.cache/paylake/airflow-venv/<pinned versions>, about a minute from PyPI).
airflow-test: build
	PAYLAKE_BIN=$(BIN) tests/airflow/run.sh

# The pipeline with landing and lake on S3 (moto's server on 127.0.0.1 and a free port, stopped
# whatever happens), compared table by table with the local run; Bronze and Gold killed mid-run
# and re-run (about 25 s on 2 cores). tests/s3/run.sh creates its own venv once
# ($(HOME)/.cache/paylake/s3-venv/<pinned versions>: moto[server], pytest).
s3-test: build
	PAYLAKE_BIN=$(BIN) tests/s3/run.sh tests/s3/test_s3.py

# Silver and Gold on a Ballista cluster on loopback (`paylake cluster scheduler` and two
# executors as processes), the lake on moto's S3: the sample and CLUSTER_TEST_PAYMENTS generated
# payments (default 200,000), every table compared with the local engine's.
cluster-test: build
	PAYLAKE_BIN=$(BIN) CLUSTER_TEST_PAYMENTS=$(CLUSTER_TEST_PAYMENTS) tests/s3/run.sh tests/s3/test_cluster.py

# The adversarial suite (issue 13, tests/adversarial/README.md): the bad-file corpus, kill -9 at
# 24 points with a re-run compared to a clean run, two writers at once, a full disk (tmpfs, as
# root), a read-only lake, hostile SQL and paths. About 2.5 minutes on 2 cores; each run of the
# binary is bounded (CHAOS_RUN_TIMEOUT s) and the whole suite by CHAOS_TIMEOUT s. Ends with
# "chaos: N cases, P passed, ...".
CHAOS_TIMEOUT ?= 600
chaos: build venv
	PAYLAKE_BIN=$(BIN) PYTHONDONTWRITEBYTECODE=1 timeout --signal=INT --kill-after=60 $(CHAOS_TIMEOUT) \
	  $(VENV)/bin/python -m pytest -q -p no:cacheprovider -o tmp_path_retention_policy=failed tests/adversarial

# Property tests of the Bronze readers (random bytes, quotes, BOMs, CRLF, blank lines, long
# lines) with many more cases than the 256 each gets in `make test`.
FUZZ_CASES ?= 20000
CLUSTER_TEST_PAYMENTS ?= 200000
fuzz:
	PROPTEST_CASES=$(FUZZ_CASES) $(CARGO) test --release --workspace -- fuzz_

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --release --workspace --all-targets -- -D warnings

clean:
	rm -rf $(LAKE) unified_table.csv

# Speed and peak memory of each stage against DuckDB's one-shot unified query, in one run on
# the same generated input (BENCH_PAYMENTS payments, default 1,000,000; both landing layouts).
# BENCH_PAYLAKE_FLAGS go to paylake silver and gold; BENCH_VERIFY=1 also compares the tables.
BENCH_PAYMENTS ?= 1000000
bench: build $(VENV)/.installed
	PAYLAKE_BIN=$(BIN) VENV=$(VENV) BENCH_PAYLAKE_FLAGS="$(BENCH_PAYLAKE_FLAGS)" BENCH_LAYOUTS="$(BENCH_LAYOUTS)" \
	  BENCH_VERIFY="$(BENCH_VERIFY)" bench/run.sh $(BENCH_PAYMENTS)

# What one 15-minute batch (10k payments, a risk batch of 100 accounts, 50 labels) costs on a lake
# of N payments, for each N in BENCH_SIZES (default "100000 1000000"; base lakes are cached).
bench-incremental: build
	PAYLAKE_BIN=$(BIN) BENCH_SIZES="$(BENCH_SIZES)" BENCH_FLAGS="$(BENCH_PAYLAKE_FLAGS)" bench/incremental.sh
