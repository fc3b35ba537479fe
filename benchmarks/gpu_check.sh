#!/usr/bin/env bash
# One-call GPU validation of the fused CUDA co-attention (run on a machine with an NVIDIA GPU):
#   1. print the device, 2. build libweakclip_coattn for this GPU's architecture into build/,
#   3. run tests/test_cuda_build.py with the gpu-marked parity tests (a skip counts as a failure here),
#   4. benchmark fused vs PyTorch (fp32, fp16; B 1 and 8; N = 1025; K = 21) -> benchmarks/results/.
# Exit codes: 0 all passed, 2 no usable GPU, 3 build failed, 4 tests failed or skipped, 5 benchmark failed.
# Env: PY (python, default .venv/bin/python or python3), CUDA_ARCHS (default: this GPU), TENSORRT_ROOT (optional).
set -uo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=.venv/bin/python; else PY=python3; fi
fi
mkdir -p benchmarks/results
LOG=benchmarks/results/gpu_check_$(date +%Y%m%d_%H%M%S).log
exec > >(tee "$LOG") 2>&1
echo "== gpu_check: $(date)  repo $ROOT  python $PY"

echo "== device"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
fi
if ! ARCH=$("$PY" - <<'EOF'
import torch, sys
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA GPU")
major, minor = torch.cuda.get_device_capability()
print(f"{major}{minor}")
print(f"torch {torch.__version__} CUDA {torch.version.cuda}: {torch.cuda.get_device_name()}", file=sys.stderr)
EOF
); then
  echo "gpu_check: no usable CUDA GPU -- nothing validated"; exit 2
fi
ARCHS=${CUDA_ARCHS:-$ARCH}
echo "architecture(s): $ARCHS"

echo "== build (cmake, nvcc $(nvcc --version 2>/dev/null | tail -1))"
TRT_ARGS=()
[[ -n "${TENSORRT_ROOT:-}" ]] && TRT_ARGS+=("-DTENSORRT_ROOT=$TENSORRT_ROOT")
if ! cmake -S . -B build -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CUDA_ARCHITECTURES=$ARCHS" ${TRT_ARGS[@]+"${TRT_ARGS[@]}"} \
   || ! cmake --build build -j; then
  echo "gpu_check: BUILD FAILED"; exit 3
fi
export WEAKCLIP_CUDA_LIB=$ROOT/build/libweakclip_coattn.so
ls -la "$WEAKCLIP_CUDA_LIB" build/libweakclip_trt_plugin.so 2>/dev/null

echo "== parity tests (kernel vs PyTorch reference)"
TEST_OUT=$(mktemp)
"$PY" -m pytest -q -rs -p no:cacheprovider -m "gpu or not gpu" tests/test_cuda_build.py 2>&1 | tee "$TEST_OUT"
TEST_RC=${PIPESTATUS[0]}
if [[ $TEST_RC -ne 0 ]]; then
  echo "gpu_check: TESTS FAILED (pytest exit $TEST_RC)"; exit 4
fi
if grep -q "SKIPPED" "$TEST_OUT"; then
  echo "gpu_check: tests were SKIPPED on a GPU machine (see above) -- treated as a failure"; exit 4
fi

if "$PY" -c "import tensorrt" 2>/dev/null; then
  echo "== TensorRT runner (engine build, cache, execution parity vs the torch engine)"
  if ! "$PY" -m pytest -q -rs -p no:cacheprovider -m "tensorrt or gpu or not gpu" tests/test_trt_engine.py; then
    echo "gpu_check: TENSORRT TESTS FAILED"; exit 4
  fi
else
  echo "== TensorRT not installed: TensorRT runner execution tests not run (pip install tensorrt)"
fi

echo "== benchmark"
if ! "$PY" -m benchmarks.bench_cuda_coattn --out benchmarks/results; then
  echo "gpu_check: BENCHMARK FAILED"; exit 5
fi
echo "== gpu_check: all passed; log $LOG"
exit 0
