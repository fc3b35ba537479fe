# Common commands.  `make demo` and `make test` do all set-up on a fresh machine (a local .venv).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# PyTorch's CPU-only wheels: used by the set-up on machines without an NVIDIA GPU (no CUDA libraries, no triton).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup demo test test-all lint format cuda gpu-check gpu-wheels gpu-results bench-cpu bench-train bench-ablation clean

setup: $(STAMP)

# torch first (CPU wheels where there is no GPU and PyTorch's index answers; otherwise the pinned pair from the
# default index, requirements/cpu.txt), then the package with every extra.  pip shows its progress.
$(STAMP): pyproject.toml requirements/cpu.txt requirements/torch-cpu.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	@if command -v nvidia-smi >/dev/null 2>&1 || [ -e /proc/driver/nvidia ]; then \
	    echo "set-up: NVIDIA GPU found: torch from the default index (requirements/cpu.txt)"; \
	    $(BIN)/python -m pip install -r requirements/cpu.txt; \
	elif $(BIN)/python -c "import urllib.request as u; u.urlopen('$(TORCH_CPU_INDEX)/torch/', timeout=10)" 2>/dev/null; then \
	    echo "set-up: no NVIDIA GPU: torch CPU wheels from $(TORCH_CPU_INDEX) (requirements/torch-cpu.txt)"; \
	    $(BIN)/python -m pip install --timeout 60 --index-url $(TORCH_CPU_INDEX) -r requirements/torch-cpu.txt \
	    || { echo "set-up: the CPU index failed; requirements/cpu.txt from the default index"; \
	         $(BIN)/python -m pip install -r requirements/cpu.txt; }; \
	else \
	    echo "set-up: no NVIDIA GPU, $(TORCH_CPU_INDEX) not reachable: requirements/cpu.txt from the default index"; \
	    $(BIN)/python -m pip install -r requirements/cpu.txt; \
	fi
	$(BIN)/python -m pip install -e ".[all,dev]"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/weakclip demo $(ARGS)

# gpu-wheels first: tests/test_gpu_image_dryrun.py installs them the way benchmarks/gpu_check.sh does.
# TEST_WORKERS pytest-xdist workers (default 2, the CI machine's cores; 0 runs in this process); --dist loadgroup
# with the groups of tests/conftest.py: a module's tests run in one worker, and the modules that read the same
# export share one.  `make test` leaves out the tests marked slow (pyproject addopts).
TEST_WORKERS ?= 2
PYTEST := HF_HUB_OFFLINE=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadgroup
test: $(STAMP) gpu-wheels
	$(PYTEST) tests

# `make test` plus the tests marked slow: the full-size (ViT-B/16) checks and the heavy forms of checks that
# `make test` runs in a cheaper form (e.g. predict_probs against the official 12-view oracle on all five image
# sizes instead of two).
test-all: $(STAMP) gpu-wheels
	$(PYTEST) -m "slow or not slow" tests

# What CI checks before the tests: ruff (lint + format) and mypy (settings in pyproject.toml [tool.mypy]).
lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/mypy

format: $(STAMP)
	$(BIN)/ruff format . && $(BIN)/ruff check --fix .

cuda:
	cmake -S . -B build -DCMAKE_BUILD_TYPE=Release && cmake --build build -j2

gpu-check:  # no set-up: a GPU machine brings its own torch (and gpu_check.sh installs .whl/ when it is there)
	bash benchmarks/gpu_check.sh --out $(or $(OUT),runs/gpu_check)

# The wheels the lent GPU image lacks (benchmarks/gpu_wheels.txt, pinned; cp312 manylinux, no dependencies) into
# .whl/ (ignored), for `carry: [".whl"]`: gpu_check.sh installs them with pip --no-index --no-deps --target.
# Fails when they pass GPU_WHEELS_MAX_MIB (the device tool carries 64 MiB of untracked files in all).
GPU_WHEELS_MAX_MIB ?= 48
gpu-wheels: .whl/.complete

.whl/.complete: benchmarks/gpu_wheels.txt
	rm -rf .whl.partial && mkdir -p .whl.partial
	$(PY) -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
	    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
	    -d .whl.partial -r benchmarks/gpu_wheels.txt
	@want=$$(grep -cE '^[A-Za-z0-9]' benchmarks/gpu_wheels.txt); got=$$(ls .whl.partial/*.whl | wc -l); \
	bytes=$$(cat .whl.partial/*.whl | wc -c); \
	if [ "$$got" -ne "$$want" ]; then echo "gpu-wheels: $$got wheels for $$want pins"; exit 1; fi; \
	if [ "$$bytes" -gt $$(( $(GPU_WHEELS_MAX_MIB) * 1048576 )) ]; then \
	    echo "gpu-wheels: $$bytes bytes > $(GPU_WHEELS_MAX_MIB) MiB"; exit 1; fi; \
	echo "gpu-wheels: $$got wheels, $$(( bytes / 1024 )) KiB: $$(cd .whl.partial && echo *.whl)"
	rm -rf .whl && mv .whl.partial .whl && touch .whl/.complete

# $(OUT) from the device tool (gpu_check.json, logs, results) -> benchmarks/results/gpu_* and the README's GPU rows.
gpu-results: $(STAMP)
	$(BIN)/python -m weakclip.benchmarks.gpu_results $(OUT)

# The benchmarks write the repository's committed results (benchmarks/results/); run from elsewhere they default
# to ./weakclip_bench/.
# CPU engines by tier (ViT-B/16, ~40 min on 2 cores; run it alone on the machine), then the tiers' mask mIoU on the
# trained demo model (trains it first if demo_out/ has none).
bench-cpu: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/weakclip bench cpu-engines --rounds 2 --out benchmarks/results
	test -f demo_out/run/final.safetensors -a -f demo_out/onnx/weakclip.onnx || HF_HUB_OFFLINE=1 $(BIN)/weakclip demo
	HF_HUB_OFFLINE=1 $(BIN)/weakclip bench tier-masks --demo demo_out --out benchmarks/results

bench-train: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/weakclip bench training --out benchmarks/results

bench-ablation: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/weakclip bench loss-ablation --out benchmarks/results --workdir runs/ablation

clean:
	rm -rf build runs demo_out weakclip_bench .pytest_cache
