# Two commands on a fresh machine (Python 3.11):
#   make demo   set everything up, run the embedded demo study (no download), write runs/demo/report
#   make test   set everything up, run the test suite
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
STAMP   = $(VENV)/.installed

.PHONY: demo test setup bench clean

setup: $(STAMP)

# torch==2.13.0 is the local CPU build here (the same pin gives the CUDA build on a GPU machine);
# torchvision 0.28.0 is its match. Both are pinned so pip never pulls a different torch.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet torchvision==0.28.0 "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[test]" "torch==2.13.0" "torchvision==0.28.0"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/zoo-study run

test: $(STAMP)
	$(BIN)/python -m pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/bench_scoring.py
	$(BIN)/python benchmarks/bench_scheduling.py

clean:
	rm -rf $(VENV) runs .pytest_cache
