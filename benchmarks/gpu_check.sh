#!/usr/bin/env bash
# One-call GPU validation of WeakCLIP deployment, made to finish within 6 minutes on one H100 / H200, build included:
#   1. device       nvidia-smi + torch's view of the GPU (compute capability -> the CUDA architecture to build)
#   2. deps         the wheels in .whl/ (`make gpu-wheels`: what the GPU image lacks, benchmarks/gpu_wheels.txt)
#                   installed with pip --no-index --no-deps --target into the work folder, which goes on PYTHONPATH
#                   after the repository root (the package runs from the working tree: no pip install of it); then
#                   one import check of everything the later steps need; optional pieces the machine lacks
#                   (pydensecrf, TensorRT, ONNX Runtime's CUDA EP) are listed as "not available on this machine"
#   3. build        CMake + nvcc: libweakclip_coattn for this GPU (+ the TensorRT plugin when TENSORRT_ROOT is set)
#   4. parity       the gpu-marked kernel-vs-PyTorch tests of tests/test_cuda_build.py (a skip counts as a failure);
#                   with the tensorrt package installed also tests/test_trt_engine.py (engine build + GPU parity)
#   5. kernel bench benchmarks/bench_cuda_coattn.py (fused co-attention vs PyTorch)
#   6. e2e bench    benchmarks/bench_gpu_e2e.py (ViT-B/16 at 512²: official-style fp32 per window vs the torch engine
#                   fp32 / fp16 / bf16 batched, fused co-attention, CUDA graph, torch.compile, ORT CUDA / TensorRT
#                   when available; windows/s and peak GPU memory per row; goals)
#   then one summary line and gpu_check.json.  Each step starts only when the time it needs is left, runs under what
#   is left, and keeps what it finished (the benchmarks write their JSON after every row); a step or e2e row that the
#   limit cut is named in the summary ("cut: ...") and in gpu_check.json ("cut").
#
# On the lent GPU machine (the device tool; first, here: `make gpu-wheels`):
#   run  command: bash benchmarks/gpu_check.sh --out $OUT --time-limit 360   carry: [".whl"]   timeout_s: 420
#   $OUT then holds gpu_check.json, gpu_check.log, parity_tests.txt, cuda_coattn_<gpu>.{json,md} and
#   gpu_e2e.{json,md,png} (8 files: what the tool brings back); `make gpu-results OUT=<that folder>` turns them into
#   benchmarks/results/gpu_* and the README's GPU rows.
#
# Usage: bash benchmarks/gpu_check.sh --out DIR [--build-dir DIR] [--time-limit SECONDS] [--dry-run] [--skip-e2e]
#   --out DIR         the results go here (created if missing): gpu_check.log, gpu_check.json, parity_tests.txt,
#                     cuda_coattn_<gpu>.{json,md}, gpu_e2e.{json,md,png}; nothing else
#   --build-dir DIR   CMake build folder, kept (default: a temporary work folder, removed at the end, which also
#                     holds the installed wheels)
#   --time-limit S    wall-clock limit for the whole check (default 360, at least 30)
#   --dry-run         no GPU needed: install the wheels, check the imports, configure (not compile) the CMake
#                     project, run the e2e benchmark in --cpu-smoke mode; the GPU steps are reported as not run.
#                     For CPU machines and CI.
#   --skip-e2e        stop after the kernel benchmark
# Env: PY (python; default .venv/bin/python, else python3), CUDA_ARCHS (default: this GPU's), CUDACXX (nvcc; default:
#   nvcc on PATH, then /usr/local/cuda/bin/nvcc), TENSORRT_ROOT (build the plugin), CMAKE_GENERATOR (default: Unix
#   Makefiles when make exists, else Ninja), WEAKCLIP_WHEELS (wheel folder; default <repo>/.whl).
# Exit codes: 0 all passed, 2 no usable GPU, 3 build failed, 4 tests failed or skipped, 5 a benchmark failed,
#   6 time limit reached (a step or row cut), 7 a needed Python package missing, 64 usage error.  Later steps still
#   run after a failure; the first failure's code is returned.
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
T0=$SECONDS
# Resolve relative paths against the caller's directory before moving to the repository root.
mkdir -p "$OUT" || { echo "gpu_check: cannot create $OUT" >&2; exit 64; }
OUT=$(cd "$OUT" && pwd)
if [[ -n "$BUILD" ]]; then
  { mkdir -p "$BUILD" && BUILD=$(cd "$BUILD" && pwd); } || { echo "gpu_check: cannot create $BUILD" >&2; exit 64; }
fi
WORK=$(mktemp -d "${TMPDIR:-/tmp}/weakclip_gpu_check.XXXXXX") || { echo "gpu_check: no work folder" >&2; exit 64; }
BUILD=${BUILD:-$WORK/build}
SITE=$WORK/site
cd "$(dirname "$0")/.." || exit 64
ROOT=$PWD
if [[ -z "${PY:-}" ]]; then
  if [[ -x .venv/bin/python ]]; then PY=$ROOT/.venv/bin/python; else PY=python3; fi
fi
WHEELS=${WEAKCLIP_WHEELS:-$ROOT/.whl}
# The package runs from this working tree without an install: $WORK/pkg/weakclip links weakclip/'s entries and the
# top-level folders engines/, export/, training/, benchmarks/ as weakclip.engines, ... (the layout pyproject.toml's
# package-dir gives the wheel); the wheels' folder comes after it.
PKG=$WORK/pkg/weakclip
mkdir -p "$PKG" || exit 64
for entry in "$ROOT"/weakclip/*; do ln -s "$entry" "$PKG/"; done
for folder in engines export training benchmarks; do ln -s "$ROOT/$folder" "$PKG/$folder"; done
export PYTHONPATH="$WORK/pkg:$SITE${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONSAFEPATH=1  # the repository root (the current folder) must not shadow $WORK/pkg's weakclip
export PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

LOG=$OUT/gpu_check.log
exec > >(tee "$LOG") 2>&1
TEE_PID=$!
FIRST_RC=0
STEPS=(device deps build parity kernel_bench e2e)
declare -A STEP            # step -> one-word result
declare -A NOTE            # step -> detail
CUT=()                     # steps and e2e rows cut by the time limit
fail() { [[ $FIRST_RC -eq 0 ]] && FIRST_RC=$1; }
left() { echo $(( LIMIT - (SECONDS - T0) )); }
# run_limited SECONDS CMD...: the command under `timeout` when coreutils has it (rc 124 = stopped at the limit)
run_limited() {
  local s=$1; shift
  if (( s < 1 )); then return 124; fi
  if command -v timeout >/dev/null; then timeout --kill-after=10 "$s" "$@"; else "$@"; fi
}
# The kernel steps leave E2E_RESERVE seconds to the end-to-end benchmark.  fits STEP NEED [RESERVE]: true when NEED
# seconds are left for STEP beyond RESERVE, else STEP is marked cut (named in the summary and gpu_check.json).
E2E_RESERVE=$(( SKIP_E2E == 1 ? 0 : 180 ))
fits() {
  local avail=$(( $(left) - ${3:-$E2E_RESERVE} ))
  if (( avail >= $2 )); then return 0; fi
  STEP[$1]=cut; NOTE[$1]="time limit: ${avail}s left for it, needs about $2s"; CUT+=("$1"); fail 6
  return 1
}
json_escape() { local s=${1//\\/\\\\}; s=${s//\"/\\\"}; printf '%s' "${s//$'\n'/ }"; }
json_list() {
  local first=1 x
  printf '['
  for x in "$@"; do [[ $first -eq 1 ]] || printf ', '; first=0; printf '"%s"' "$(json_escape "$x")"; done
  printf ']'
}

finish() {
  local status="PASS" elapsed=$(( SECONDS - T0 )) parts="" key first=1
  [[ $FIRST_RC -ne 0 ]] && status="FAIL(rc $FIRST_RC)"
  [[ $FIRST_RC -eq 6 ]] && status="PARTIAL(rc 6: time limit)"
  [[ $DRY -eq 1 ]] && status="DRY-RUN $status"
  {
    printf '{\n  "status": "%s", "exit_code": %d, "dry_run": %s, "elapsed_s": %d, "time_limit_s": %d,\n' \
      "$(json_escape "$status")" "$FIRST_RC" "$([[ $DRY -eq 1 ]] && echo true || echo false)" "$elapsed" "$LIMIT"
    printf '  "python": "%s", "cut": %s, "steps": {\n' "$(json_escape "$PY")" "$(json_list ${CUT[@]+"${CUT[@]}"})"
    for key in "${STEPS[@]}"; do
      [[ $first -eq 1 ]] || printf ',\n'
      first=0
      printf '    "%s": {"result": "%s", "note": "%s"}' "$key" "$(json_escape "${STEP[$key]:-not run}")" \
        "$(json_escape "${NOTE[$key]:-}")"
      parts+=" | $key ${STEP[$key]:-not run}${NOTE[$key]:+ (${NOTE[$key]})}"
    done
    printf '\n  }\n}\n'
  } > "$OUT/gpu_check.json"
  [[ ${#CUT[@]} -gt 0 ]] && parts+=" | cut: ${CUT[*]}"
  rm -rf "$WORK"
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
    sys.exit(f"torch {torch.__version__} sees no CUDA GPU")
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

# ------------------------------------------------------------------------------------------------------------ deps
echo "== deps (wheels from $WHEELS, then one import check)"
shopt -s nullglob
WHLS=("$WHEELS"/*.whl)
shopt -u nullglob
DEPS_OK=1
if [[ ${#WHLS[@]} -gt 0 ]]; then
  if run_limited "$(left)" "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir \
       --disable-pip-version-check --target "$SITE" "${WHLS[@]}"; then
    NOTE[deps]="installed $(for w in "${WHLS[@]}"; do w=${w##*/}; echo "${w%%-py3*}"; done | sed 's/-cp3.*//' | paste -sd' ' -)"
  else
    DEPS_OK=0; NOTE[deps]="pip install --target of the ${#WHLS[@]} wheels in $WHEELS failed"
  fi
else
  NOTE[deps]="no wheels in $WHEELS"
fi
IMPORTS=$("$PY" - "$ROOT" "$DRY" <<'EOF'
import importlib
import importlib.util
import sys
from pathlib import Path



def fail(msg: str) -> None:  # on stdout: the script keeps it for the summary
    print(msg)
    sys.exit(1)


root, dry = Path(sys.argv[1]), sys.argv[2] == "1"
needed = ["torch", "numpy", "cv2", "PIL", "safetensors", "yaml", "tqdm", "open_clip", "ftfy"] + ([] if dry else ["pytest"])
missing = [m for m in needed if importlib.util.find_spec(m) is None]
if missing:
    fail(f"missing: {' '.join(missing)} (make gpu-wheels here, then carry [\".whl\"])")
import weakclip

where = Path(weakclip.__file__).resolve().parent
if where != root / "weakclip":
    fail(f"weakclip imported from {where}, not from the working tree {root}")
for mod in ("weakclip.model.model", "weakclip.masks.inference", "weakclip.engines.torch_engine", "weakclip.engines.cuda_ops",
            "weakclip.benchmarks.bench_gpu_e2e", "weakclip.benchmarks.bench_cuda_coattn"):
    try:
        importlib.import_module(mod)
    except Exception as e:  # noqa: BLE001 - name the module that does not import, and why
        fail(f"{mod} does not import: {type(e).__name__}: {e}")
absent = [what for mod, what in (("pydensecrf", "pydensecrf (CRF)"), ("tensorrt", "TensorRT"),
                                 ("matplotlib", "matplotlib (no PNG)")) if importlib.util.find_spec(mod) is None]
try:
    import onnxruntime

    if "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        absent.append(f"ONNX Runtime CUDA EP (onnxruntime {onnxruntime.__version__} is CPU-only)")
except ImportError:
    absent.append("ONNX Runtime")
print("not available on this machine: " + ", ".join(absent) if absent else "every optional piece is available")
EOF
)
rc=$?
echo "${IMPORTS:-import check failed (rc $rc)}"
if [[ $rc -ne 0 || $DEPS_OK -eq 0 ]]; then
  STEP[deps]=FAILED; NOTE[deps]+="; ${IMPORTS:-import check failed}"; fail 7
else
  STEP[deps]=ok; NOTE[deps]+="; $IMPORTS"
fi

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
elif fits build "$(( DRY == 1 ? 5 : 60 ))"; then
  echo "nvcc $NVCC ($("$NVCC" --version 2>/dev/null | tail -1)), generator ${CMAKE_GENERATOR:-${GEN_ARGS[1]:-Unix Makefiles}}"
  TRT_ARGS=()
  [[ -n "${TENSORRT_ROOT:-}" ]] && TRT_ARGS+=("-DTENSORRT_ROOT=$TENSORRT_ROOT" -DWEAKCLIP_REQUIRE_TENSORRT=ON)
  tb=$SECONDS
  if ! CUDACXX=$NVCC run_limited "$(( $(left) - E2E_RESERVE ))" cmake ${GEN_ARGS[@]+"${GEN_ARGS[@]}"} -S "$ROOT" \
       -B "$BUILD" -DCMAKE_BUILD_TYPE=Release "-DCMAKE_CUDA_ARCHITECTURES=$ARCHS" ${TRT_ARGS[@]+"${TRT_ARGS[@]}"}; then
    STEP[build]=FAILED; NOTE[build]="cmake configure failed"; fail 3
  elif [[ $DRY -eq 1 ]]; then
    STEP[build]=configured; NOTE[build]="dry run: configured, not compiled, $((SECONDS - tb))s"
  else
    CUDACXX=$NVCC run_limited "$(( $(left) - E2E_RESERVE ))" cmake --build "$BUILD" -j "$(nproc 2>/dev/null || echo 4)"
    rc=$?
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
      STEP[build]=cut; NOTE[build]="compile stopped by the time limit after $((SECONDS - tb))s"; CUT+=(build); fail 6
    elif [[ $rc -ne 0 ]]; then
      STEP[build]=FAILED; NOTE[build]="compile failed (rc $rc)"; fail 3
    else
      STEP[build]=ok; NOTE[build]="sm_$ARCHS in $((SECONDS - tb))s"
      [[ -f $BUILD/libweakclip_trt_plugin.so ]] && NOTE[build]+=", TensorRT plugin built"
      ls -la "$LIB" "$BUILD"/libweakclip_trt_plugin.so 2>/dev/null
    fi
  fi
fi
export WEAKCLIP_CUDA_LIB=$LIB
[[ -f $BUILD/libweakclip_trt_plugin.so ]] && export WEAKCLIP_TRT_PLUGIN=$BUILD/libweakclip_trt_plugin.so

# ---------------------------------------------------------------------------------------------------------- parity
echo "== parity tests (kernels vs PyTorch references on the GPU)"
if [[ $DRY -eq 1 ]]; then
  STEP[parity]=skipped; NOTE[parity]="dry run"
elif [[ ${STEP[build]:-} != ok ]]; then
  STEP[parity]=skipped; NOTE[parity]="no library (build ${STEP[build]:-not run})"
  [[ ${STEP[build]:-} == cut ]] || fail 4
elif fits parity 30; then
  TEST_OUT=$OUT/parity_tests.txt
  run_limited "$(( $(left) - E2E_RESERVE ))" "$PY" -m pytest -q -rs -p no:cacheprovider -m gpu \
    tests/test_cuda_build.py 2>&1 | tee "$TEST_OUT"
  rc=${PIPESTATUS[0]}
  counts=$(grep -Eo '[0-9]+ (passed|failed|skipped|error)' "$TEST_OUT" | paste -sd, -)
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    STEP[parity]=cut; NOTE[parity]="stopped by the time limit: ${counts:-no summary}"; CUT+=(parity); fail 6
  elif [[ $rc -ne 0 ]]; then
    STEP[parity]=FAILED; NOTE[parity]="pytest rc $rc: ${counts:-no summary}"; fail 4
  elif grep -q "skipped" <<<"$counts"; then
    STEP[parity]=FAILED; NOTE[parity]="tests SKIPPED on a GPU machine: $counts"; fail 4
  else
    STEP[parity]=ok; NOTE[parity]=$counts
  fi
  if "$PY" -c "import tensorrt" 2>/dev/null; then
    echo "== TensorRT runner (engine build, cache, execution parity vs the torch engine)"
    if run_limited "$(( $(left) - E2E_RESERVE ))" "$PY" -m pytest -q -rs -p no:cacheprovider \
         -m "tensorrt or gpu or not gpu" tests/test_trt_engine.py 2>&1 | tee -a "$TEST_OUT"; then
      NOTE[parity]+="; TensorRT runner tests passed"
    else
      STEP[parity]=FAILED; NOTE[parity]+="; TensorRT runner tests FAILED"; fail 4
    fi
  else
    NOTE[parity]+="; TensorRT runner tests: not available on this machine (no tensorrt)"
  fi
fi

# ---------------------------------------------------------------------------------------------------- kernel bench
echo "== kernel benchmark (fused co-attention vs PyTorch)"
if [[ $DRY -eq 1 ]]; then
  STEP[kernel_bench]=skipped; NOTE[kernel_bench]="dry run"
elif [[ ${STEP[build]:-} != ok ]]; then
  STEP[kernel_bench]=skipped; NOTE[kernel_bench]="no library (build ${STEP[build]:-not run})"
elif fits kernel_bench 20; then
  budget=$(( $(left) - E2E_RESERVE ))
  run_limited "$budget" "$PY" -m weakclip.benchmarks.bench_cuda_coattn --out "$OUT" --lib "$LIB" --iters 30 \
    --time-budget "$(( budget - 10 ))"
  rc=$?
  if [[ $rc -eq 0 ]]; then
    STEP[kernel_bench]=ok; NOTE[kernel_bench]="cuda_coattn_*.json/.md"
  elif [[ $rc -eq 6 || $rc -eq 124 || $rc -eq 137 ]]; then
    STEP[kernel_bench]=cut; NOTE[kernel_bench]="time limit: the rows that finished are in cuda_coattn_*.json"
    CUT+=(kernel_bench); fail 6
  else
    STEP[kernel_bench]=FAILED; NOTE[kernel_bench]="rc $rc"; fail 5
  fi
fi

# ------------------------------------------------------------------------------------------------------- e2e bench
echo "== end-to-end benchmark"
if [[ $SKIP_E2E -eq 1 ]]; then
  STEP[e2e]=skipped; NOTE[e2e]="--skip-e2e"
elif fits e2e "$(( DRY == 1 ? 10 : 40 ))" 0; then
  E2E_ARGS=(--out "$OUT")
  if [[ $DRY -eq 1 ]]; then E2E_ARGS+=(--cpu-smoke); fi
  [[ -f $LIB ]] && E2E_ARGS+=(--cuda-lib "$LIB")
  # A row that no longer fits the budget is cut (and named); the hard stop is the limit itself.
  budget=$(( $(left) - 15 ))
  run_limited "$(( $(left) - 3 ))" "$PY" -m weakclip.benchmarks.bench_gpu_e2e "${E2E_ARGS[@]}" \
    --time-budget "$(( budget > 1 ? budget : 1 ))"
  rc=$?
  summary=$("$PY" - "$OUT/gpu_e2e.json" <<'EOF' 2>/dev/null
import json, sys
r = json.load(open(sys.argv[1]))
rows = r["rows"]
ok = [x for x in rows if x["status"] == "ok"]
best = max(ok, key=lambda x: x["windows_per_s"], default=None)
met = {True: "met", False: "NOT met", None: "n/a"}
mem = f", peak {best['peak_allocated_mib']:.0f} MiB allocated" if best and best.get("peak_allocated_mib") else ""
print(f"{len(ok)}/{len(rows)} rows ok" + (f", best {best['key']} {best['windows_per_s']:.1f} win/s{mem}" if best else "")
      + "; goals " + "/".join(met[g["met"]] for g in r.get("goals", [])))
print(" ".join(x["key"] for x in rows if x.get("cut")))
EOF
)
  cut_rows=$(sed -n 2p <<<"$summary")
  summary=$(sed -n 1p <<<"$summary")
  for k in $cut_rows; do CUT+=("e2e:$k"); done
  if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    STEP[e2e]=cut; NOTE[e2e]="stopped at the time limit; partial gpu_e2e.json: ${summary:-none}"; CUT+=(e2e); fail 6
  elif [[ $rc -ne 0 ]]; then
    STEP[e2e]=FAILED; NOTE[e2e]="rc $rc; ${summary:-no gpu_e2e.json}"; fail 5
  else
    STEP[e2e]=ok; NOTE[e2e]=${summary:-}
    if [[ -n $cut_rows ]]; then NOTE[e2e]+="; rows cut by the time limit: $cut_rows"; fail 6; fi
  fi
fi
finish
