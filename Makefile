# The two commands a new machine needs: `make run` and `make test`.
# Each creates .venv and installs what it needs first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEV_STAMP := $(VENV)/.installed-dev

.PHONY: run dev test lint typecheck unit sim-test sim bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The Raft core is compiled in place by mypyc (setup.py): rebuilt when its sources change.
CORE_SOURCES := $(wildcard src/ringlock/raft/*.py)

$(STAMP): pyproject.toml setup.py $(CORE_SOURCES) | $(BIN)/python
	$(BIN)/pip install --quiet -e .
	touch $@

$(DEV_STAMP): pyproject.toml setup.py $(CORE_SOURCES) | $(BIN)/python
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP) $@

# Starts a local 3-node cluster (data in ./.ringlock), runs the demo; stays up on a terminal.
run: $(STAMP)
	$(BIN)/ringlock dev --demo

dev: $(STAMP)
	$(BIN)/ringlock dev

test: $(DEV_STAMP) lint typecheck net-tools
	$(BIN)/python -m pytest tests
	@# The core's unit tests again on its sources: what an install without a compiler runs.
	RINGLOCK_PURE_PYTHON=1 $(BIN)/python -m pytest tests/unit/test_raft_*.py \
		tests/unit/test_native_core.py

lint: $(DEV_STAMP)
	$(BIN)/ruff check src tests bench setup.py

typecheck: $(DEV_STAMP)
	$(BIN)/mypy

sim: $(STAMP)
	$(BIN)/ringlock sim --seeds 500

# Benchmarks are not tests: figures go to docs/PERFORMANCE.md with machine and date.
bench: $(STAMP)
	$(BIN)/python bench/sim_bench.py
	$(BIN)/python bench/checker_bench.py
	$(BIN)/ringlock bench

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache build
	rm -f src/ringlock/raft/*.so src/ringlock/raft/native.json src/*__mypyc*.so

# The long torture run (30 min of faults on 5 real nodes); its result goes to
# docs/RELIABILITY.md. A short run of every fault kind is part of `make test`.
.PHONY: torture
TORTURE_SEED ?= 1
torture: $(STAMP) net-tools
	$(BIN)/ringlock torture --nodes 5 --seconds 1800 --seed $(TORTURE_SEED) --out torture-out

# Torture's network namespaces need `ip` (iproute2) and `iptables`. As root (CI: a
# clean Debian machine) they are installed when missing; anyone else is told, and the
# torture tests then use the transport fault layer on loopback instead.
.PHONY: net-tools
net-tools:
	@if command -v ip >/dev/null 2>&1 && command -v iptables >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
		echo "installing iproute2 and iptables for torture's network namespaces"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
			iproute2 iptables >/dev/null || echo "warning: apt-get failed; torture uses the transport fault layer"; \
	else \
		echo "note: ip/iptables missing and not root: torture uses the transport fault layer"; \
	fi
