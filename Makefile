# Myriad: `make demo` runs the pipeline on the embedded planet; `make test` runs the suite.
# Both create .venv and install the pinned CPU environment first (idempotent).
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONSTRAINTS := constraints-cpu.txt

.PHONY: install demo test test-fast bench clean

$(STAMP): pyproject.toml $(CONSTRAINTS)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade "pip>=24" setuptools wheel
	$(BIN)/python -m pip install --quiet -c $(CONSTRAINTS) -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/myriad run configs/quickstart.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# after `make demo` (train, ensemble and skill use its store and checkpoints)
bench: $(STAMP)
	$(BIN)/python benchmarks/ingest.py
	$(BIN)/python benchmarks/train.py
	$(BIN)/python benchmarks/ensemble.py --skip-full --pairs 16 --compile --set ensemble.leads_per_shard=41
	$(BIN)/python benchmarks/skill.py --checkpoints runs/quickstart/checkpoints/sfno/seed-0 runs/quickstart/checkpoints/sfno/seed-1

clean:
	rm -rf $(VENV) runs .pytest_cache
