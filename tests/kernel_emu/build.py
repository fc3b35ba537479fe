"""Build the CPU-EMULATED co-attention library from the unmodified ``engines/csrc/coattn_kernel.cu``.

Steps (all into a caller-chosen directory; nothing is written into the repository):

1. ``cmake`` configure of the top-level ``CMakeLists.txt`` (configure only, no build) to generate
   ``generated/weakclip_plugin_names.h`` from ``engines/csrc/plugin_names.json`` exactly as the real build does.
   The project enables the CUDA language, so the configure needs ``nvcc`` even though nothing is compiled by it.
2. Rewrite every ``kernel<<<grid, block, smem, stream>>>(args...)`` launch into
   ``::emu::launch(::emu::LaunchConfig{grid, block, smem, stream}, kernel, args...)`` (line numbers are kept and a
   ``#line`` directive points diagnostics at the original ``.cu``).
3. ``g++ -std=c++17 -O1 -fno-strict-aliasing -shared`` with ``emu_include/`` first on the include path (its
   ``cuda_runtime.h`` / ``cuda_fp16.h`` / ``mma.h`` shims pull in ``emu_cuda.h``, the execution-model emulator), plus
   ``-fsanitize=alignment,bounds,signed-integer-overflow`` when the toolchain supports it: misaligned vector
   (``float4`` / ``uint4``) accesses and out-of-bounds indexing of fixed-size (shared-memory) arrays are reported on
   stderr as ``runtime error:`` lines, which the tests treat as failures.

The result is loaded with ``weakclip.engines.cuda_ops.CudaOps(path, host_pointers=True)``: host (CPU) tensors, no stream.
It is an EMULATION of the CUDA execution model for checking kernel logic, never a GPU run.

``$WEAKCLIP_EMU_KERNEL_SRC`` replaces the kernel source (e.g. a mutated copy, for checking that the tests catch a
bug).  Command line: ``python tests/kernel_emu/build.py OUT_DIR [--src FILE.cu]`` prints the library path.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
EMU_INCLUDE = HERE / "emu_include"
DEFAULT_KERNEL_SRC = REPO / "engines" / "csrc" / "coattn_kernel.cu"
SRC_ENV = "WEAKCLIP_EMU_KERNEL_SRC"
LIB_NAME = "libweakclip_coattn_emu.so"
SANITIZE_FLAGS = ("-fsanitize=alignment,bounds,signed-integer-overflow",)
CXX_FLAGS = (
    "-std=c++17",
    "-fPIC",
    "-shared",
    "-fno-strict-aliasing",  # the kernels type-pun shared memory (uint4 over half), as CUDA code does
    "-Wall",
    "-Wno-unused-function",
    "-Wno-unknown-pragmas",  # #pragma unroll
)

# kernel_name or kernel_name<template args> followed by <<<config>>>( ; config on one line (line numbers are kept).
_LAUNCH = re.compile(r"([A-Za-z_][\w:]*(?:<[^<>;()]*>)?)[ \t]*<<<(.*?)>>>[ \t]*\(([ \t]*\))?")


class EmuUnavailable(RuntimeError):
    """A tool the emulated build needs is missing (the tests skip with this message)."""


@dataclass(frozen=True)
class EmuBuild:
    lib: Path  # the emulated shared library
    source: Path  # the kernel source it was built from
    rewritten: Path  # the launch-rewritten translation unit
    launch_sites: int  # <<<...>>> launches rewritten
    ubsan: bool  # built with the UB sanitizer
    seconds: float  # configure + compile wall time


def find_nvcc() -> str | None:
    """nvcc from PATH, $CUDACXX or /usr/local/cuda/bin/nvcc (also used by tests/test_cuda_build.py)."""
    found = shutil.which("nvcc")
    if found:
        return found
    for cand in (os.environ.get("CUDACXX"), "/usr/local/cuda/bin/nvcc"):
        if cand and Path(cand).is_file():
            return cand
    return None


def kernel_source() -> Path:
    """``$WEAKCLIP_EMU_KERNEL_SRC`` if set, else ``engines/csrc/coattn_kernel.cu``."""
    env = os.environ.get(SRC_ENV)
    return Path(env).resolve() if env else DEFAULT_KERNEL_SRC


def rewrite_launches(src: str) -> tuple[str, int]:
    """Every ``k<<<cfg>>>(`` -> ``::emu::launch(::emu::LaunchConfig{cfg}, k, `` ; refuses a launch it cannot parse."""

    def repl(m: re.Match) -> str:
        head = f"::emu::launch(::emu::LaunchConfig{{{m.group(2)}}}, {m.group(1)}"
        return head + ")" if m.group(3) else head + ", "

    out, n = _LAUNCH.subn(repl, src)
    left = out.count("<<<")
    if left:
        line = out[: out.index("<<<")].count("\n") + 1
        raise RuntimeError(f"{left} kernel launch(es) not rewritten (first at line {line}): extend _LAUNCH")
    if n == 0:
        raise RuntimeError("no <<<...>>> kernel launch found in the kernel source")
    return out, n


def cmake_generator_args() -> list[str]:
    """``-G`` arguments for a CMake configure that can build here: none when ``$CMAKE_GENERATOR`` is set or ``make``
    is present (CMake's default, Unix Makefiles), ``-G Ninja`` when only ``ninja`` is (GPU images often lack make).
    EmuUnavailable when neither is installed.  benchmarks/gpu_check.sh makes the same choice."""
    if os.environ.get("CMAKE_GENERATOR") or shutil.which("make"):
        return []
    if shutil.which("ninja"):
        return ["-G", "Ninja"]
    raise EmuUnavailable("neither make nor ninja found: CMake needs one of them to build")


def generate_plugin_names_header(build_dir: Path) -> Path:
    """CMake configure (no build) of the repository into ``build_dir``; returns the ``generated`` include dir."""
    cmake = shutil.which("cmake")
    if cmake is None:
        raise EmuUnavailable("cmake not found (needed to generate weakclip_plugin_names.h)")
    nvcc = find_nvcc()
    if nvcc is None:
        raise EmuUnavailable(
            "nvcc not found: CMakeLists.txt enables the CUDA language, so even the configure that generates "
            "weakclip_plugin_names.h needs the CUDA toolkit (nothing is compiled with it)"
        )
    cfg = subprocess.run(
        [
            cmake,
            *cmake_generator_args(),
            "-S",
            str(REPO),
            "-B",
            str(build_dir),
            "-DCMAKE_CUDA_ARCHITECTURES=80",
            "-DCMAKE_BUILD_TYPE=Release",
        ],  # fmt: skip
        capture_output=True,
        text=True,
        env=dict(os.environ, CUDACXX=nvcc),
    )
    header = build_dir / "generated" / "weakclip_plugin_names.h"
    if cfg.returncode != 0 or not header.is_file():
        raise RuntimeError(f"cmake configure failed (rc {cfg.returncode}):\n{cfg.stdout[-3000:]}\n{cfg.stderr[-3000:]}")
    return header.parent


def _probe(cxx: str, work: Path, flags: tuple[str, ...]) -> bool:
    """Can ``cxx`` build a shared library using _Float16 with these flags?"""
    src = work / "probe.cpp"
    src.write_text("_Float16 h(float x) { return static_cast<_Float16>(x); }\nint f(int a, int b) { return a + b; }\n")
    r = subprocess.run(
        [cxx, *CXX_FLAGS, *flags, str(src), "-o", str(work / "probe.so")], capture_output=True, text=True
    )
    return r.returncode == 0


def compile_library(
    out_dir: Path, generated_dir: Path, src: Path | None = None, opt: str = "-O1", sanitize: bool = True
) -> EmuBuild:
    """Rewrite + compile ``src`` (default: ``kernel_source()``) into ``out_dir/libweakclip_coattn_emu.so``."""
    t0 = time.time()
    cxx = shutil.which("g++")
    if cxx is None:
        raise EmuUnavailable("g++ not found (the emulated kernel build needs GCC >= 12 for _Float16)")
    out_dir.mkdir(parents=True, exist_ok=True)
    if not _probe(cxx, out_dir, ()):
        raise EmuUnavailable(f"{cxx} cannot compile _Float16 (needs GCC >= 12 on x86-64 / aarch64)")
    ubsan = sanitize and _probe(cxx, out_dir, SANITIZE_FLAGS)
    src = Path(src) if src is not None else kernel_source()
    text, n = rewrite_launches(src.read_text(encoding="utf-8"))
    rewritten = out_dir / "emu_kernel.cpp"
    rewritten.write_text(f'#line 1 "{src}"\n{text}', encoding="utf-8")
    lib = out_dir / LIB_NAME
    cmd = [
        cxx,
        *CXX_FLAGS,
        opt,
        *(SANITIZE_FLAGS if ubsan else ()),
        "-I",
        str(EMU_INCLUDE),
        "-I",
        str(src.parent),
        "-I",
        str(DEFAULT_KERNEL_SRC.parent),
        "-I",
        str(generated_dir),
        str(rewritten),
        "-o",
        str(lib),
    ]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"emulated build failed:\n{' '.join(cmd)}\n{r.stdout[-4000:]}\n{r.stderr[-6000:]}")
    return EmuBuild(lib, src, rewritten, n, ubsan, time.time() - t0)


def build(out_dir: Path, src: Path | None = None, opt: str = "-O1", sanitize: bool = True) -> EmuBuild:
    """Configure (header) + compile into ``out_dir``."""
    t0 = time.time()
    out_dir = Path(out_dir)
    generated = generate_plugin_names_header(out_dir / "cmake")
    b = compile_library(out_dir, generated, src, opt, sanitize)
    return EmuBuild(b.lib, b.source, b.rewritten, b.launch_sites, b.ubsan, time.time() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir", type=Path)
    ap.add_argument("--src", type=Path, default=None, help=f"kernel source (default ${SRC_ENV} or the repo's .cu)")
    ap.add_argument("--opt", default="-O1")
    ap.add_argument("--no-sanitize", action="store_true")
    a = ap.parse_args()
    b = build(a.out_dir, a.src, a.opt, not a.no_sanitize)
    print(f"{b.lib}  (from {b.source}; {b.launch_sites} launch sites; ubsan={b.ubsan}; {b.seconds:.1f} s)")


if __name__ == "__main__":
    main()
