# Two entry points for a fresh clone: `make demo` and `make test`.
# Each creates .venv on first use; nothing is installed outside it.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint typecheck clean sandbox bench soak soak-ha systemd-check

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	# Bytecode written once (pip does it for a wheel; here PYTHONDONTWRITEBYTECODE may be
	# set): every command would otherwise compile its imports again (0.1 s of a no-op pass).
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib reconciler plugins > /dev/null || true
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/reconciler demo

test: $(STAMP)
	$(BIN)/ruff check reconciler plugins tests benchmarks
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q

# More SIGKILL trials than the default suite's 10 (tests/apply/test_crash_safety.py).
soak: $(STAMP)
	SOAK_TRIALS=200 $(BIN)/python -m pytest -q tests/apply/test_crash_safety.py

# Randomized failovers during rollouts, two members on a real etcd (issue 16; minutes).
soak-ha: $(STAMP)
	$(BIN)/python benchmarks/soak_ha.py --failovers 20

# The unit under a real systemd in systemd-nspawn (root; minutes; see the script).
systemd-check: $(STAMP)
	bash scripts/systemd-check

lint: $(STAMP)
	$(BIN)/ruff check reconciler plugins tests benchmarks
	$(BIN)/mypy

sandbox: $(STAMP)
	$(BIN)/reconciler sandbox

# Figures against the issue-7 targets, written to benchmarks/RESULTS.md (minutes).
bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .mypy_cache .hypothesis
