# Two commands: `make run` starts a broker, `make test` runs lint, type checks and every test.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-dev

.PHONY: run cluster test lint typecheck pytest soak simulate chaos bench bench-cluster bench-replication iot bench-iot clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP): $(BIN)/python pyproject.toml scripts/install-system-packages.sh
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	sh scripts/install-system-packages.sh
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/distributary serve

# A local etcd and three brokers on 127.0.0.1 (data under ./distributary-cluster/).
cluster: $(STAMP)
	$(BIN)/python -m broker.cluster.local_cluster

lint: $(STAMP)
	$(BIN)/ruff check client broker tests bench examples
	$(BIN)/ruff format --check client broker tests bench examples

typecheck: $(STAMP)
	$(BIN)/mypy

pytest: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test: lint typecheck pytest

soak: $(STAMP)
	$(BIN)/python -m pytest -q -m slow

# The replication simulation over many seeds: SEEDS=n (default 100000), START=n, or SEED=n.
simulate: $(STAMP)
	$(BIN)/python tests/simulation/run_seeds.py

# A seeded chaos run against etcd and three brokers (docs/testing.md); non-zero on
# any anomaly: SEED=n (default 1), MINUTES=n (default 5), FAULTS=a,b (comma-separated,
# python -m tests.chaos --help), CHAOS_ARGS for more options.
CHAOS_FAULTS := kill,pause,partition,partition-etcd,election-kill,disk,restart
chaos: $(STAMP)
	$(BIN)/python -m tests.chaos --seed $(or $(SEED),1) --minutes $(or $(MINUTES),5) \
		--faults $(or $(FAULTS),$(CHAOS_FAULTS)) $(CHAOS_ARGS)

bench: $(STAMP)
	$(BIN)/python -m bench.storage

# Three brokers with etcd beside one broker: throughput, topic creation, failover.
bench-cluster: $(STAMP)
	$(BIN)/python -m bench.cluster

# Replication factor 3 on three brokers beside one broker: produce with acks=all,
# latency, leader kills, a wiped follower's catch-up (ARGS=... adds flags).
bench-replication: $(STAMP)
	$(BIN)/python -m bench.replication $(ARGS)

# The IoT pipeline example with its scripted faults (examples/iot/README.md), into
# runs/iot-<time>/; IOT_ARGS adds demo flags (e.g. --devices 200 --duration 30).
iot: $(STAMP)
	$(BIN)/python -m examples.iot demo --devices 1000 --rate 1 --duration 120 \
		--out runs/iot-$$(date +%Y%m%d-%H%M%S) $(IOT_ARGS)

# The highest rate the whole IoT pipeline sustains on this machine (bench/iot_pipeline.py).
bench-iot: $(STAMP)
	$(BIN)/python -m bench.iot_pipeline $(ARGS)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
