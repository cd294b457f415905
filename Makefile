# Every target installs into .venv first when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/assl_digits.yaml

.PHONY: install install-gpu demo test bench tensorboard clean

$(BIN)/al-lightning: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --upgrade pip
	$(BIN)/pip install -e ".[dev]"
	touch $@

install: $(BIN)/al-lightning

# faiss-gpu and faiss-cpu provide the same module: install the GPU build over the CPU one.
install-gpu: install
	$(BIN)/pip uninstall -y faiss-cpu
	$(BIN)/pip install --force-reinstall --no-deps faiss-gpu

demo: install
	$(BIN)/al-lightning fit --config $(CONFIG)

test: install
	$(BIN)/python -m pytest -q

bench: install
	$(BIN)/python benchmarks/run.py

tensorboard: install
	$(BIN)/tensorboard --logdir runs

clean:
	rm -rf runs lightning_logs .pytest_cache
