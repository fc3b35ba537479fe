# Common commands.  `make demo` and `make test` do all set-up on a fresh machine (a local .venv).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup demo test test-all lint format cuda gpu-check bench-cpu bench-train bench-ablation clean

setup: $(STAMP)

$(STAMP): pyproject.toml requirements/cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# CPU torch pair first (see requirements/cpu.txt for why), then the package with every extra.
	$(BIN)/pip install -q -r requirements/cpu.txt
	$(BIN)/pip install -q -e ".[all,dev]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python demo.py

test: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q tests

test-all: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -m "slow or not slow" tests

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

cuda:
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j2

gpu-check:  # no set-up: a GPU machine brings its own torch
	bash benchmarks/gpu_check.sh --out $(or $(OUT),runs/gpu_check)

bench-cpu: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python benchmarks/bench_cpu_engines.py --rounds 2

bench-train: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.bench_training

bench-ablation: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/python -m benchmarks.bench_loss_ablation

clean:
	rm -rf build runs demo_out .pytest_cache
