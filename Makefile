# Common commands.  `make demo` and `make test` do all set-up on a fresh machine (a local .venv).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# PyTorch's CPU-only wheels: used by the set-up on machines without an NVIDIA GPU (no CUDA libraries, no triton).
TORCH_CPU_INDEX ?= https://download.pytorch.org/whl/cpu

.PHONY: setup demo test test-all lint format cuda gpu-check bench-cpu bench-train bench-ablation clean

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

# The benchmarks write the repository's committed results (benchmarks/results/); run from elsewhere they default
# to ./weakclip_bench/.
# CPU engines by tier (ViT-B/16, ~40 min on 2 cores; run it alone on the machine), then the tiers' mask mIoU on the
# trained demo model (trains it first if demo_out/ has none).
bench-cpu: $(STAMP)
	$(BIN)/python -m pip install -q -e ".[openvino]"
	HF_HUB_OFFLINE=1 $(BIN)/weakclip bench cpu-engines --rounds 2 --out benchmarks/results
	test -f demo_out/run/final.safetensors -a -f demo_out/onnx/weakclip.onnx || HF_HUB_OFFLINE=1 $(BIN)/weakclip demo
	HF_HUB_OFFLINE=1 $(BIN)/weakclip bench tier-masks --demo demo_out --out benchmarks/results

bench-train: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/weakclip bench training --out benchmarks/results

bench-ablation: $(STAMP)
	HF_HUB_OFFLINE=1 $(BIN)/weakclip bench loss-ablation --out benchmarks/results --workdir runs/ablation

clean:
	rm -rf build runs demo_out weakclip_bench .pytest_cache
