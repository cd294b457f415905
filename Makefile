# Every target installs into .venv first when it is missing.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
CONFIG ?= configs/assl_digits.yaml

.PHONY: install install-gpu demo test bench bench-gpu bench-throughput bench-methods bench-label-free bench-curves bench-scale tensorboard clean

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

# Images/s of a FixMatch step by augmentation pipeline (part of make bench; about 6 minutes on 2 cores).
bench-throughput: install
	$(BIN)/python benchmarks/throughput.py

# Every figure only a GPU gives, in one run of about 8 minutes on one GPU: throughput with bf16, channels_last
# and compile, a bf16 + channels_last fit through the CLI, acquisition at 1,000,000 x 512 (logs in runs/bench_gpu).
bench-gpu: install
	PYTHON=$(BIN)/python benchmarks/gpu_figures.sh

# The SSL method suite on MNIST at 20 labels (8 methods x 3 seeds, about 5 minutes a run on 2 cores).
bench-methods: install
	$(BIN)/python benchmarks/label_efficiency.py

# Label-free selection on MNIST: 3 pre-trainings (reused from runs/bench_label_free), 5 strategies x 5 seeds,
# AS3L's prior pseudo-labels, 10 FlexMatch fits (about 1.5 hours on 2 cores).
bench-label-free: install
	$(BIN)/python benchmarks/label_free.py

# Learning curves of the acquisition strategies on MNIST: 5 strategies x 5 seeds x 2 regimes (1 and 10
# labels per class per cycle), a shared initial fit per seed and 3 FixMatch fits per run (about 2 hours on
# 2 cores); finished runs in runs/bench_learning_curves are reused.
bench-curves: install
	$(BIN)/python benchmarks/learning_curves.py --jobs 2

# Pool inference and every strategy on 1,000,000 x 512 synthetic features, 1,000 classes, budget 10,000:
# seconds and peak host/device memory per case (a GPU run; on 2 CPU cores pass a smaller --n).
bench-scale: install
	$(BIN)/python benchmarks/acquisition_scale.py

tensorboard: install
	$(BIN)/tensorboard --logdir runs

clean:
	rm -rf runs lightning_logs .pytest_cache
