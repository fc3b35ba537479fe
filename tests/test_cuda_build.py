"""The CUDA co-attention library: build, plugin identity, and kernel-vs-reference parity.

Grouped by what each test compares against:

* build      — CMake + nvcc produce ``libweakclip_coattn.so`` exporting the C API.  Runs on the CPU-only CI (nvcc
               compiles without a GPU); there it builds ONE architecture (sm_80) to stay fast; on a GPU machine it
               builds the GPU's own architecture.  Skips when nvcc or cmake is missing.
* identity   — ``plugin_names.json`` == the header CMake generates from it == the library's compiled weight table
               == ``weakclip.model.plugin_names`` packing (host-only library functions: no GPU needed).
* gpu        — flash attention, score map and the full co-attention vs PyTorch references; marked ``gpu`` and
               skipped with "needs a CUDA GPU" when torch sees none.

Tolerances (fp32): an attention output is a convex combination of value rows (|v| ~ 1); fp32 error comes from the
Dh-term dot products (~sqrt(Dh)·2⁻²⁴ relative), exp2f (≤ 2 ulp) and the Nk-term running sums (≤ Nk·2⁻²⁴ ≈ 6e-5
relative worst case for Nk = 1025, ~sqrt(Nk)·2⁻²⁴ ≈ 2e-6 typical), so 1e-4 absolute is a safe bound; the full
co-attention chains 6 layers + LayerNorms, S is a cosine in [-1, 1]: 1e-4 absolute.  fp16: inputs are the same
fp16 values for kernel and reference; P and the output are rounded to fp16 (2⁻¹¹ ≈ 4.9e-4 relative each), so
5e-3 absolute + 5e-3 relative for attention; the fp16 co-attention must stay within 2x the error of PyTorch's own
fp16 module (both measured against a float64 reference), floor 5e-3.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from kernel_emu.build import EmuUnavailable, cmake_generator_args, find_nvcc  # tests/ is on sys.path under pytest
from kernel_emu.symbols import exported_symbols, unexpected_plugin_exports

from weakclip.engines import cuda_ops
from weakclip.model import plugin_names

REPO = Path(__file__).resolve().parents[1]
API_SYMBOLS = (
    "weakclip_coattn_params_size",
    "weakclip_coattn_workspace_size",
    "weakclip_coattn_num_weights",
    "weakclip_coattn_weight_name",
    "weakclip_coattn_weight_numel",
    "weakclip_coattn_check_layout",
    "weakclip_coattn_forward",
    "weakclip_flash_attention",
    "weakclip_score_map",
    "weakclip_last_error",
)
GPU = torch.cuda.is_available()
needs_gpu = pytest.mark.skipif(not GPU, reason="needs a CUDA GPU")


def _arch() -> str:
    if GPU:
        major, minor = torch.cuda.get_device_capability()
        return f"{major}{minor}"
    return "80"  # CPU-only CI: one architecture keeps the compile short


@pytest.fixture(scope="session")
def cuda_build(tmp_path_factory) -> dict:
    """Configure + build into a temp dir (one architecture). Returns paths and the configure log."""
    nvcc, cmake = find_nvcc(), shutil.which("cmake")
    if nvcc is None:
        pytest.skip("nvcc not found (CUDA toolkit needed to compile the kernels)")
    if cmake is None:
        pytest.skip("cmake not found")
    try:
        generator = cmake_generator_args()  # make, else Ninja (GPU images may lack make)
    except EmuUnavailable as e:
        pytest.skip(str(e))
    build = tmp_path_factory.mktemp("cuda_build")
    env = dict(os.environ, CUDACXX=nvcc)
    t0 = time.time()
    cfg = subprocess.run(
        [
            cmake,
            *generator,
            "-S",
            str(REPO),
            "-B",
            str(build),
            f"-DCMAKE_CUDA_ARCHITECTURES={_arch()}",
            "-DCMAKE_BUILD_TYPE=Release",
        ],
        capture_output=True,
        text=True,
        env=env,
    )
    assert cfg.returncode == 0, f"cmake configure failed:\n{cfg.stdout}\n{cfg.stderr}"
    bld = subprocess.run(
        [cmake, "--build", str(build), "-j", str(os.cpu_count() or 2)], capture_output=True, text=True, env=env
    )
    assert bld.returncode == 0, f"cmake build failed:\n{bld.stdout[-4000:]}\n{bld.stderr[-4000:]}"
    return {
        "dir": build,
        "lib": build / "libweakclip_coattn.so",
        "header": build / "generated" / "weakclip_plugin_names.h",
        "configure_log": cfg.stdout + cfg.stderr,
        "seconds": time.time() - t0,
    }


# ----------------------------------------------------------------------------------------------------------------
# build


def test_cmake_builds_library_with_c_api(cuda_build):
    lib = cuda_build["lib"]
    assert lib.is_file(), f"{lib} was not produced"
    nm = shutil.which("nm")
    if nm is None:
        pytest.skip("nm not found")
    exported = exported_symbols(lib)
    missing = [s for s in API_SYMBOLS if s not in exported]
    assert not missing, f"C API symbols not exported: {missing}"
    # The static CUDA runtime stays private (linked with --exclude-libs).
    assert not any(s.startswith("cuda") for s in exported), sorted(s for s in exported if s.startswith("cuda"))
    log = cuda_build["configure_log"]
    assert "weakclip_trt_plugin" in log  # the configure says whether the TensorRT plugin is built
    print(f"configure + build: {cuda_build['seconds']:.1f}s for sm_{_arch()}")


def test_plugin_target_only_with_tensorrt(cuda_build):
    plugin = cuda_build["dir"] / "libweakclip_trt_plugin.so"
    if "TensorRT not found" in cuda_build["configure_log"]:
        assert not plugin.exists(), "plugin built although TensorRT was reported missing"
    else:
        assert plugin.is_file(), "TensorRT was found but the plugin was not built"
        if shutil.which("nm") is None:
            pytest.skip("nm not found: the plugin's exported symbols are not checked")
        # The plugin links the same kernel objects: their weakclip_* C API (and the CUDA runtime) must stay private.
        get_creators = "WEAKCLIP_TRT_GET_CREATORS:BOOL=ON" in (cuda_build["dir"] / "CMakeCache.txt").read_text()
        assert unexpected_plugin_exports(exported_symbols(plugin), get_creators=get_creators) == []


# ----------------------------------------------------------------------------------------------------------------
# identity: JSON == generated header == library == Python packing


def _header_defines(text: str) -> dict[str, str]:
    # Join backslash-continued lines, then read `#define NAME VALUE`.
    text = text.replace("\\\n", " ")
    return {m.group(1): m.group(2).strip() for m in re.finditer(r"^#define (\w+)[ \t]*(.*)$", text, re.M)}


def test_generated_header_matches_plugin_json(cuda_build):
    spec = json.loads((REPO / "engines" / "csrc" / "plugin_names.json").read_text())
    d = _header_defines(cuda_build["header"].read_text())
    assert d["WEAKCLIP_PLUGIN_OP_TYPE"] == f'"{spec["op_type"]}"'
    assert d["WEAKCLIP_PLUGIN_VERSION"] == f'"{spec["plugin_version"]}"'
    assert d["WEAKCLIP_PLUGIN_NAMESPACE"] == f'"{spec["plugin_namespace"]}"'
    assert re.findall(r'"([^"]*)"', d["WEAKCLIP_PLUGIN_ATTRIBUTE_NAMES_INIT"]) == spec["attributes"]
    assert re.findall(r'"([^"]*)"', d["WEAKCLIP_PLUGIN_ATTRIBUTE_TYPES_INIT"]) == [
        spec["attribute_info"][a][0] for a in spec["attributes"]
    ]
    assert int(d["WEAKCLIP_PLUGIN_NUM_ATTRIBUTES"]) == len(spec["attributes"])
    entries = [list(e) for e in re.findall(r'\{"([^"]*)", "([^"]*)"\}', d["WEAKCLIP_PACKED_WEIGHTS_INIT"])]
    assert entries == spec["packed_weights"]
    # Python reads the same file.
    assert plugin_names.plugin_spec()["op_type"] == spec["op_type"]


def test_library_weight_table_matches_python(cuda_build):
    ops = cuda_ops.CudaOps(cuda_build["lib"])  # params-struct size checked against the ctypes mirror here
    assert ops.lib.weakclip_coattn_check_layout() == 0
    for layers in (0, 1, 3):
        assert ops.weight_names(layers) == plugin_names.packed_weight_names(layers)
        shapes = plugin_names.packed_weight_shapes(layers, 512, 256, 1024)
        assert ops.weight_numels(layers, 512, 256, 1024) == [int(torch.Size(s).numel()) for s in shapes]
    dims = plugin_names.CoAttnDims(embed_dim=512, width=256, mlp_hidden=1024, layers=3)
    small = ops.workspace_size(batch=1, grid_h=32, grid_w=32, num_classes=21, dims=dims, heads=4)
    big = ops.workspace_size(batch=8, grid_h=32, grid_w=32, num_classes=21, dims=dims, heads=4)
    assert 0 < small < big
    bad = plugin_names.CoAttnDims(embed_dim=512, width=256, mlp_hidden=1024, layers=3)
    assert ops.workspace_size(batch=1, grid_h=4, grid_w=4, num_classes=21, dims=bad, heads=3) == 0  # head dim 85


def test_pack_matches_state_dict_and_is_strict():
    coattention = pytest.importorskip("weakclip.model.coattention")
    m = coattention.CoAttentionMatching(64, 32, 2, 2)
    sd = m.state_dict()
    packed = plugin_names.pack_coattention_weights(m)
    names = plugin_names.packed_weight_names(2)
    assert sorted(names) == sorted(sd)
    assert torch.equal(packed, torch.cat([sd[n].reshape(-1) for n in names]))
    assert plugin_names.coattention_dims(m) == plugin_names.CoAttnDims(64, 32, 128, 2)
    with pytest.raises(KeyError, match="unexpected"):
        plugin_names.pack_coattention_weights({**sd, "extra.weight": torch.zeros(1)})
    with pytest.raises(KeyError, match="missing"):
        plugin_names.pack_coattention_weights({k: v for k, v in sd.items() if k != "gamma"})


def test_missing_library_message_says_how_to_build(tmp_path):
    with pytest.raises(cuda_ops.CudaOpsUnavailable, match=re.escape(cuda_ops.BUILD_COMMAND)):
        cuda_ops.CudaOps(tmp_path / "nope.so")


# ----------------------------------------------------------------------------------------------------------------
# gpu: kernel vs reference


@pytest.fixture(scope="session")
def gpu_ops(request) -> cuda_ops.CudaOps:
    if not GPU:
        pytest.skip("needs a CUDA GPU")
    env = os.environ.get(cuda_ops.LIB_ENV)
    if env and Path(env).is_file():
        return cuda_ops.CudaOps(env)  # e.g. benchmarks/gpu_check.sh points this at its build/
    return cuda_ops.CudaOps(request.getfixturevalue("cuda_build")["lib"])


def _ref_attention(q, k, v, scale):
    q, k, v = (x.double().permute(0, 2, 1, 3) for x in (q, k, v))  # (B, H, N, Dh)
    a = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)
    return (a @ v).permute(0, 2, 1, 3)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(
    "head_dim,nq,nk", [(64, 1025, 1025), (64, 21, 1025), (64, 1025, 21), (16, 37, 45), (32, 100, 3), (128, 70, 130)]
)
def test_flash_attention_matches_reference(gpu_ops, dtype, head_dim, nq, nk):
    g = torch.Generator(device="cuda").manual_seed(0)
    B, H = 2, 4
    q = torch.randn(B, nq, H, head_dim, device="cuda", generator=g).to(dtype)
    k = torch.randn(B, nk, H, head_dim, device="cuda", generator=g).to(dtype)
    v = torch.randn(B, nk, H, head_dim, device="cuda", generator=g).to(dtype)
    o = gpu_ops.flash_attention(q, k, v)
    torch.cuda.synchronize()
    ref = _ref_attention(q, k, v, head_dim**-0.5)
    atol, rtol = (1e-4, 1e-4) if dtype == torch.float32 else (5e-3, 5e-3)
    torch.testing.assert_close(o.double(), ref, atol=atol, rtol=rtol)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_flash_attention_broadcast_kv(gpu_ops, dtype):
    g = torch.Generator(device="cuda").manual_seed(1)
    q = torch.randn(3, 50, 2, 64, device="cuda", generator=g).to(dtype)
    k = torch.randn(1, 21, 2, 64, device="cuda", generator=g).to(dtype).expand(3, -1, -1, -1)  # batch stride 0
    v = torch.randn(1, 21, 2, 64, device="cuda", generator=g).to(dtype).expand(3, -1, -1, -1)
    o = gpu_ops.flash_attention(q, k, v, scale=0.2)
    atol = 1e-4 if dtype == torch.float32 else 5e-3
    torch.testing.assert_close(o.double(), _ref_attention(q, k, v, 0.2), atol=atol, rtol=atol)


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_score_map_matches_reference(gpu_ops, dtype):
    coattention = pytest.importorskip("weakclip.model.coattention")
    g = torch.Generator(device="cuda").manual_seed(2)
    B, K, E, h, w = 2, 21, 512, 32, 32
    v_star = torch.randn(B, 1 + h * w, E, device="cuda", generator=g).to(dtype)
    t_star = torch.randn(B, K, E, device="cuda", generator=g).to(dtype)
    s = gpu_ops.score_map(v_star, t_star, h, w)
    f_star = v_star[:, 1:].double().transpose(1, 2).reshape(B, E, h, w)
    ref = coattention.score_map(f_star, t_star.double())
    atol = 1e-5 if dtype == torch.float32 else 2e-3
    torch.testing.assert_close(s.double(), ref, atol=atol, rtol=0)


def _perturbed_module(coattention, E, W, heads, layers):
    torch.manual_seed(0)
    m = coattention.CoAttentionMatching(E, W, heads, layers).eval()
    with torch.no_grad():  # non-trivial LayerNorm affine, biases and residual scales
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.add_(0.05 * torch.randn_like(p))
            elif p.dim() == 1:
                p.add_(0.3 * torch.randn_like(p))
    return m


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("layout", ["tokens", "split"])
def test_coattention_matches_reference(gpu_ops, dtype, layout):
    coattention = pytest.importorskip("weakclip.model.coattention")
    E, W, heads, L, K, B, h, w = 512, 256, 4, 3, 21, 2, 16, 16
    m = _perturbed_module(coattention, E, W, heads, L).cuda()
    gen = torch.Generator(device="cuda").manual_seed(3)
    g = torch.randn(B, E, device="cuda", generator=gen)
    dense = torch.randn(B, E, h, w, device="cuda", generator=gen)
    T = torch.randn(K, E, device="cuda", generator=gen)
    sd64 = {k: v.double() for k, v in m.state_dict().items()}
    ref = coattention.coattention_reference(sd64, g.double(), dense.double(), T.double(), heads=heads, layers=L)
    g_, dense_, T_ = g.to(dtype), dense.to(dtype), T.to(dtype)
    if layout == "tokens":
        V = torch.cat([g_[:, None], dense_.flatten(2).transpose(1, 2)], dim=1)  # (B, 1 + h·w, E)
        S = gpu_ops.coattention(m, V, T_, grid=(h, w))
    else:
        S = gpu_ops.coattention(m, g=g_, dense=dense_, T=T_)
    torch.cuda.synchronize()
    assert S.shape == (B, K, h, w) and S.dtype == dtype
    err = (S.double() - ref).abs().max().item()
    if dtype == torch.float32:
        assert err <= 1e-4, f"fp32 max abs error {err:.3e}"
    else:
        m16 = _perturbed_module(coattention, E, W, heads, L).cuda().half()
        with torch.no_grad():
            S16 = m16(g_, dense_, T_)[0]
        err_torch = (S16.double() - ref).abs().max().item()
        assert err <= max(2 * err_torch, 5e-3), f"fp16 max abs error {err:.3e} vs PyTorch fp16 {err_torch:.3e}"


def test_cmake_generator_falls_back_to_ninja(monkeypatch):
    """GPU images may have ninja but no make: the CMake configure then asks for Ninja; neither → a clear skip."""
    from kernel_emu import build as emu_build

    monkeypatch.delenv("CMAKE_GENERATOR", raising=False)
    have: set[str] = {"make", "ninja"}
    monkeypatch.setattr(emu_build.shutil, "which", lambda name: f"/usr/bin/{name}" if name in have else None)
    assert cmake_generator_args() == []  # make present: CMake's default generator
    have.discard("make")
    assert cmake_generator_args() == ["-G", "Ninja"]
    have.clear()
    with pytest.raises(EmuUnavailable, match="neither make nor ninja"):
        cmake_generator_args()
    monkeypatch.setenv("CMAKE_GENERATOR", "Ninja")
    assert cmake_generator_args() == []  # the user's choice wins
