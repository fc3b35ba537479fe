#!/usr/bin/env bash
# One-call GPU validation of WeakCLIP deployment (designed to finish within 6 minutes on one H100, build included):
#   1. device       nvidia-smi + torch's view of the GPU (compute capability -> the CUDA architecture to build)
#   2. build        CMake + nvcc: libweakclip_coattn for this GPU (+ the TensorRT plugin when TENSORRT_ROOT is set)
#   3. parity       the gpu-marked kernel-vs-PyTorch tests of tests/test_cuda_build.py (a skip counts as a failure);
#                   with the tensorrt package installed also tests/test_trt_engine.py (engine build + GPU parity)
#   4. kernel bench benchmarks/bench_cuda_coattn.py (fused co-attention vs PyTorch)
#   5. e2e bench    benchmarks/bench_gpu_e2e.py (ViT-B/16 at 512²: official-style vs engines, goals)
#   then one summary line and gpu_check.json.
#
# Usage: bash benchmarks/gpu_check.sh --out DIR [--build-dir DIR] [--time-limit SECONDS] [--dry-run] [--skip-e2e]
#   --out DIR         every output goes here: gpu_check.log, gpu_check.json, cuda_coattn_<gpu>.{json,md},
#                     gpu_e2e.{json,md,png}, and the build folder (unless --build-dir); created if missing
#   --build-dir DIR   CMake build folder (default DIR/build from --out)
#   --time-limit S    wall-clock limit for the whole check (default 360); each step gets what is left, the e2e
#                     benchmark skips rows that no longer fit and is stopped at the limit (its JSON is kept)
#   --dry-run         no GPU needed: find the tools, configure (not compile) the CMake project, run the e2e benchmark
#                     in --cpu-smoke mode; the GPU steps are reported as not run.  For CPU machines and CI.
#   --skip-e2e        stop after the kernel benchmark
# Env: PY (python; default .venv/bin/python, else python3), CUDA_ARCHS (default: this GPU's), CUDACXX (nvcc; default:
#   nvcc on PATH, then /usr/local/cuda/bin/nvcc), TENSORRT_ROOT (build the plugin), CMAKE_GENERATOR (default: Unix
#   Makefiles when make exists, else Ninja).
# Exit codes: 0 all passed, 2 no usable GPU, 3 build failed, 4 tests failed or skipped, 5 a benchmark failed,
#   6 time limit reached, 64 usage error.  Later steps still run after a failure; the first failure's code is returned.
set -uo pipefail

usage() { awk 'NR == 1 { next } /^#/ { sub(/^# ?/, ""); print; next } { exit }' "$0"; }

OUT="" BUILD="" LIMIT=360 DRY=0 SKIP_E2E=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --out) OUT=${2:-}; shift 2 || { usage >&2; exit 64; } ;;
    --out=*) OUT=${1#*=}; shift ;;
    --build-dir) BUILD=${2:-}; shift 2 || { usage >&2; exit 64; } ;;
    --build-dir=*) BUILD=${1#*=}; shift ;;
    --time-limit) LIMIT=${2:-}; shift 2 || { usage >&2; exit 64; } ;;
    --time-limit=*) LIMIT=${1#*=}; shift ;;
    --dry-run) DRY=1; shift ;;
    --skip-e2e) SKIP_E2E=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) echo "gpu_check: unknown argument '$1'" >&2; usage >&2; exit 64 ;;
  esac
done
if [[ -z "$OUT" ]]; then echo "gpu_check: --out DIR is required (all outputs go there)" >&2; usage >&2; exit 64; fi
if ! [[ "$LIMIT" =~ ^[0-9]+$ ]] || (( LIMIT < 30 )); then
  echo "gpu_check: --time-limit must be a whole number of seconds >= 30, got '$LIMIT'" >&2; exit 64
fi
# Resolve relative paths against the caller's directory before moving to the repository root.
mkdir -p "$OUT" || { echo "gpu_check: cannot create $OUT" >&2; exit 64; }
OUT=$(cd "$OUT" && pwd)
BUILD=${BUILD:-$OUT/build}
mkdir -p "$BUILD" && BUILD=$(cd "$BUILD" && pwd)
cd "$(dirname "$0")/.." || exit 64
ROOT=$PWD
if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
export PYTHONDONTWRITEBYTECODE=1 HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

LOG=$OUT/gpu_check.log
exec > >(tee "$LOG") 2>&1
TEE_PID=$!
T0=$SECONDS
FIRST_RC=0
declare -A STEP            # step -> one-word result
declare -A NOTE            # step -> detail
fail() { [[ $FIRST_RC -eq 0 ]] && FIRST_RC=$1; }
left() { echo $(( LIMIT - (SECONDS - T0) )); }
# run_limited SECONDS CMD...: the command under `timeout` when coreutils has it (rc 124 = stopped at the limit)
run_limited() {
  local s=$1; shift
  if (( s < 1 )); then return 124; fi
  if command -v timeout >/dev/null; then timeout --kill-after=10 "$s" "$@"; else "$@"; fi
}
json_escape() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '%s' "${s//$'\n'/ }"; }

finish() {
  local status="PASS" elapsed=$(( SECONDS - T0 )) parts="" key
  [[ $FIRST_RC -ne 0 ]] && status="FAIL(rc $FIRST_RC)"
  [[ $DRY -eq 1 ]] && status="DRY-RUN $status"
  {
    printf '{\n  "status": "%s", "exit_code": %d, "dry_run": %s, "elapsed_s": %d, "time_limit_s": %d,\n' \
      "$(json_escape "$status")" "$FIRST_RC" "$([[ $DRY -eq 1 ]] && echo true || echo false)" "$elapsed" "$LIMIT"
    printf '  "out": "%s", "build_dir": "%s", "steps": {\n' "$(json_escape "$OUT")" "$(json_escape "$BUILD")"
    local first=1
    for key in device build parity kernel_bench e2e; do
      [[ $first -eq 1 ]] || printf ',\n'
      first=0
      printf '    "%s": {"result": "%s", "note": "%s"}' "$key" "$(json_escape "${STEP[$key]:-not run}")" \
        "$(json_escape "${NOTE[$key]:-}")"
      parts+=" | $key ${STEP[$key]:-not run}${NOTE[$key]:+ (${NOTE[$key]})}"
    done
    printf '\n  }\n}\n'
  } > "$OUT/gpu_check.json"
  echo "gpu_check: $status in ${elapsed}s$parts | outputs in $OUT"
  exec 1>&- 2>&-
  wait "$TEE_PID" 2>/dev/null
  exit "$FIRST_RC"
}

echo "== gpu_check: $(date)  repo $ROOT  python $PY  out $OUT  limit ${LIMIT}s$([[ $DRY -eq 1 ]] && echo '  DRY RUN')"

# ---------------------------------------------------------------------------------------------------------- device
echo "== device"
if command -v nvidia-smi >/dev/null; then
  nvidia-smi --query-gpu=name,driver_version,memory.total,compute_cap --format=csv || true
fi
ARCH=$("$PY" - <<'EOF'
import sys
import torch
if not torch.cuda.is_available():
    sys.exit("torch sees no CUDA GPU")
major, minor = torch.cuda.get_device_capability()
print(f"{major}{minor}")
print(f"torch {torch.__version__} CUDA {torch.version.cuda}: {torch.cuda.get_device_name()}", file=sys.stderr)
EOF
)
HAVE_GPU=$?
if [[ $HAVE_GPU -eq 0 ]]; then
  STEP[device]=ok; NOTE[device]="sm_$ARCH"
elif [[ $DRY -eq 1 ]]; then
  STEP[device]=none; NOTE[device]="no CUDA GPU (dry run)"; ARCH=80
else
  STEP[device]=FAILED; NOTE[device]="no usable CUDA GPU; nothing validated (use --dry-run on a CPU machine)"
  fail 2; finish
fi
ARCHS=${CUDA_ARCHS:-$ARCH}

# ----------------------------------------------------------------------------------------------------------- build
find_nvcc() {  # the lookup of tests/kernel_emu/build.py: PATH, $CUDACXX, /usr/local/cuda/bin/nvcc
  local c
  for c in "$(command -v nvcc 2>/dev/null)" "${CUDACXX:-}" /usr/local/cuda/bin/nvcc /usr/local/cuda-*/bin/nvcc; do
    if [[ -n "$c" && -x "$c" ]]; then echo "$c"; return 0; fi
  done
  return 1
}
echo "== build (architectures $ARCHS, build folder $BUILD)"
GEN_ARGS=()
if [[ -z "${CMAKE_GENERATOR:-}" ]] && ! command -v make >/dev/null; then
  if command -v ninja >/dev/null; then GEN_ARGS=(-G Ninja); fi
fi
LIB=$BUILD/libweakclip_coattn.so
if ! NVCC=$(find_nvcc); then
  STEP[build]=FAILED; NOTE[build]="nvcc not found (PATH, \$CUDACXX, /usr/local/cuda/bin/nvcc)"; fail 3
elif ! command -v cmake >/dev/null; then
  STEP[build]=FAILED; NOTE[build]="cmake not found"; fail 3
elif [[ -z "${CMAKE_GENERATOR:-}" && ${#GEN_ARGS[@]} -eq 0 ]] && ! command -v make >/dev/null; then
  STEP[build]=FAILED; NOTE[build]="neither make nor ninja found"; fail 3
else
  echo "nvcc $NVCC ($("$NVCC" --version 2>/dev/null | tail -1)), generator ${CMAKE_GENERATOR:-${GEN_ARGS[1]:-Unix Makefiles}}"
  TRT_ARGS=()
  [[ -n "${TENSORRT_ROOT:-}" ]] && TRT_ARGS+=("-DTENSORRT_ROOT=$TENSORRT_ROOT" -DWEAKCLIP_REQUIRE_TENSORRT=ON)
  tb=$SECONDS
  if ! CUDACXX=$NVCC run_limited "$(left)" cmake ${GEN_ARGS[@]+"${GEN_ARGS[@]}"} -S "$ROOT" -B "$BUILD" \
       -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CUDA_ARCHITECTURES=$ARCHS" ${TRT_ARGS[@]+"${TRT_ARGS[@]}"}; then
    STEP[build]=FAILED; NOTE[build]="cmake configure failed"; fail 3
  elif [[ $DRY -eq 1 ]]; then
    STEP[build]=configured; NOTE[build]="dry run: configured, not compiled, $((SECONDS - tb))s"
  elif ! CUDACXX=$NVCC run_limited "$(left)" cmake --build "$BUILD" -j "$(nproc 2>/dev/null || echo 4)"; then
    STEP[build]=FAILED; NOTE[build]="compile failed or hit the time limit"; fail 3
  else
    STEP[build]=ok; NOTE[build]="$((SECONDS - tb))s"
    [[ -f $BUILD/libweakclip_trt_plugin.so ]] && NOTE[build]+=", TensorRT plugin built"
    ls -la "$LIB" "$BUILD"/libweakclip_trt_plugin.so 2>/dev/null
  fi
fi
export WEAKCLIP_CUDA_LIB=$LIB
[[ -f $BUILD/libweakclip_trt_plugin.so ]] && export WEAKCLIP_TRT_PLUGIN=$BUILD/libweakclip_trt_plugin.so

# ---------------------------------------------------------------------------------------------------------- parity
echo "== parity tests (kernels vs PyTorch references on the GPU)"
if [[ $DRY -eq 1 ]]; then
  STEP[parity]=skipped; NOTE[parity]="dry run"
elif [[ ${STEP[build]} != ok ]]; then
  STEP[parity]=skipped; NOTE[parity]="no library (build failed)"; fail 4
else
  TEST_OUT=$OUT/parity_tests.txt
  run_limited "$(( $(left) - 150 ))" "$PY" -m pytest -q -rs -p no:cacheprovider -m gpu tests/test_cuda_build.py \
    2>&1 | tee "$TEST_OUT"
  rc=${PIPESTATUS[0]}
  counts=$(grep -Eo '[0-9]+ (passed|failed|skipped|error)' "$TEST_OUT" | paste -sd, -)
  if [[ $rc -ne 0 ]]; then
    STEP[parity]=FAILED; NOTE[parity]="pytest rc $rc: ${counts:-no summary}"; fail 4
  elif grep -q "skipped" <<<"$counts"; then
    STEP[parity]=FAILED; NOTE[parity]="tests SKIPPED on a GPU machine: $counts"; fail 4
  else
    STEP[parity]=ok; NOTE[parity]=$counts
  fi
  if "$PY" -c "import tensorrt" 2>/dev/null; then
    echo "== TensorRT runner (engine build, cache, execution parity vs the torch engine)"
    if run_limited "$(( $(left) - 150 ))" "$PY" -m pytest -q -rs -p no:cacheprovider -m "tensorrt or gpu or not gpu" \
         tests/test_trt_engine.py; then
      NOTE[parity]+="; TensorRT runner tests passed"
    else
      STEP[parity]=FAILED; NOTE[parity]+="; TensorRT runner tests FAILED"; fail 4
    fi
  else
    NOTE[parity]+="; tensorrt not installed: TensorRT runner tests not run"
  fi
fi

# ---------------------------------------------------------------------------------------------------- kernel bench
echo "== kernel benchmark (fused co-attention vs PyTorch)"
if [[ $DRY -eq 1 ]]; then
  STEP[kernel_bench]=skipped; NOTE[kernel_bench]="dry run"
elif [[ ${STEP[build]} != ok ]]; then
  STEP[kernel_bench]=skipped; NOTE[kernel_bench]="no library (build failed)"
elif run_limited "$(( $(left) - 120 ))" "$PY" -m weakclip.benchmarks.bench_cuda_coattn --out "$OUT" --lib "$LIB" \
     --iters 30; then
  STEP[kernel_bench]=ok; NOTE[kernel_bench]="cuda_coattn_*.json/.md"
else
  rc=$?
  STEP[kernel_bench]=FAILED; NOTE[kernel_bench]="rc $rc$([[ $rc -eq 124 ]] && echo ': time limit')"; fail 5
fi

# ------------------------------------------------------------------------------------------------------- e2e bench
echo "== end-to-end benchmark"
if [[ $SKIP_E2E -eq 1 ]]; then
  STEP[e2e]=skipped; NOTE[e2e]="--skip-e2e"
else
  E2E_ARGS=(--out "$OUT")
  if [[ $DRY -eq 1 ]]; then E2E_ARGS+=(--cpu-smoke); fi
  [[ -f $LIB ]] && E2E_ARGS+=(--cuda-lib "$LIB")
  budget=$(( $(left) - 25 ))  # rows that no longer fit are skipped; the hard stop below is the limit itself
  run_limited "$(( $(left) - 5 ))" "$PY" -m weakclip.benchmarks.bench_gpu_e2e "${E2E_ARGS[@]}" \
    --time-budget "$(( budget > 10 ? budget : 10 ))"
  rc=$?
  summary=$("$PY" - "$OUT/gpu_e2e.json" <<'EOF' 2>/dev/null
import json, sys
r = json.load(open(sys.argv[1]))
rows = r["rows"]
ok = [x for x in rows if x["status"] == "ok"]
best = max(ok, key=lambda x: x["windows_per_s"], default=None)
met = {True: "met", False: "NOT met", None: "n/a"}
print(f"{len(ok)}/{len(rows)} rows ok" + (f", best {best['key']} {best['windows_per_s']:.1f} win/s" if best else "")
      + "; goals " + "/".join(met[g["met"]] for g in r.get("goals", [])))
EOF
)
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    STEP[e2e]=TIMEOUT; NOTE[e2e]="stopped at the time limit; partial gpu_e2e.json: ${summary:-none}"; fail 6
  elif [[ $rc -ne 0 ]]; then
    STEP[e2e]=FAILED; NOTE[e2e]="rc $rc; ${summary:-no gpu_e2e.json}"; fail 5
  else
    STEP[e2e]=ok; NOTE[e2e]=${summary:-}
  fi
fi
finish
