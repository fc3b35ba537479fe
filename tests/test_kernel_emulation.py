"""CPU-EMULATED run of the real CUDA kernels (``engines/csrc/coattn_kernel.cu``) against float64 references.

THIS IS AN EMULATION, NOT A GPU RUN, and must never be reported as one.  ``tests/kernel_emu/build.py`` compiles the
unmodified ``.cu`` with g++ against ``tests/kernel_emu/emu_include`` (CUDA threads as fibers, ``__syncthreads`` /
``__syncwarp`` / shuffles as real barriers, WMMA m16n16k16 emulated, threads resumed in a random order after every
barrier) and the tests drive it through ``weakclip.engines.cuda_ops.CudaOps(path, host_pointers=True)`` on CPU tensors.
What a pass shows: the indexing, tile-boundary masking, online-softmax bookkeeping, reductions, launcher plumbing
(workspace layout, strides, both input layouts, fp32 and fp16 paths) and barrier placement are right for these
shapes.  What it cannot show: anything about real GPU timing, occupancy, register / shared-memory limits, the
hardware memory model or compiler (nvcc) behaviour: those need a GPU (the ``gpu``-marked tests of
``tests/test_cuda_build.py``, ``benchmarks/gpu_check.sh``).

Poisoning (the "NaN guard"): every input, and every packed weight, sits in the middle of a NaN-filled buffer, so an
out-of-bounds read that reaches a result turns it into NaN; every buffer the wrappers allocate (outputs and the
co-attention workspace) is handed out of a buffer filled with 0xFF bytes (NaN as fp32 and as fp16), so an element
that is never written stays NaN, and the 0xFF guard bytes on both sides are checked afterwards (out-of-bounds writes).
The library is built with ``-fsanitize=alignment,bounds,signed-integer-overflow`` when available; any sanitizer
report on stderr fails the test.

Tolerances are first-order rounding-error bounds computed per element from the float64 reference (u32 = 2^-24, the
fp32 unit roundoff; u16 = 2^-11, fp16's), each with a safety factor of 2 for second-order terms:

* attention, fp32 (SIMT kernel, exact fp32): a logit q·k·scale is a D-term fp32 dot product, so its absolute error
  is <= (D + 2)·u32·A_ij with A_ij = sum_d |q_d k_d|·scale; an absolute logit error is a relative error of
  p_ij = exp(logit - max), and the output o_i = sum_j P_ij v_j then moves by <= max_j(delta_ij)·(|o_i| + P|v|_i).
  The running sums over Nk keys (numerator and l) add (Nk + 8)·u32·(|o| + P|v|).
* attention, fp16 (tensor-core kernel): inputs are the same fp16 values for kernel and reference; logits and the
  accumulations are fp32 (products of fp16 values are exact in fp32), so the fp32 bound applies, plus P rounded to
  fp16 for P·V (u16·P|v|), the fp16 output (u16·|o|), and P values below fp16's normal range (absolute error
  <= 2^-25 each, <= Nk·2^-25·max|v|).
* score map: cos = <v, t> / (|v| |t|) over E terms; by Cauchy-Schwarz sum|v_e t_e| <= |v||t|, so the dot product
  contributes <= E·u32, each norm <= E·u32 / 2 + u32, the divisions a few u32: |error| <= (2E + 8)·u32; fp16 adds
  the output rounding u16·|s|.
* full co-attention, fp32: S is a cosine in [-1, 1] at the end of a chain of LayerNorm / GEMM / attention stages
  (about 11 per decoder layer and stack, plus the projections: ~75 for L = 3) whose sums have at most M = 4W terms.
  A worst-case bound over that chain is far too loose to catch anything; the random-walk estimate is
  sqrt(75)·sqrt(512)·u32 ~ 1.2e-5 (LayerNorm renormalises, so errors add rather than compound): bound 2e-5.
  fp16 stores every intermediate activation in fp16 like a ``.half()`` PyTorch module, so the error must stay
  within 2x the error of PyTorch's own fp16 module (both vs float64), floor 2e-3 (4 fp16 ulps at |S| ~ 1).

Measured with the unmodified kernels: the largest error is 0.2-2 % of the bound for fp32 attention and score map,
<= 1 % for the fp32 co-attention, 10-50 % for the fp16 bounds.  Logic bugs are far above them: a removed key mask,
a removed __syncthreads / __syncwarp, a K-bound dropped from a vector load or a wrong batch stride in the launcher
each fails at least two of these tests (checked by building mutated copies via $WEAKCLIP_EMU_KERNEL_SRC).

Sizes are small but cross every tile boundary: Nq / Nk / h·w / K / E not multiples of the tiles (SIMT flash 32
queries x 64 keys in chunks of 16, WMMA flash 64 x 32, GEMM 64 x 64 x 16|32, score map 64 tokens x 16 classes x 32
channels), head dims 16 / 32 / 64 / 128, L = 1 and 3, both visual layouts.
"""

from __future__ import annotations

import ctypes
import math
import sys
from pathlib import Path

import pytest
import torch

from weakclip.engines import cuda_ops
from weakclip.model.coattention import CoAttentionMatching, coattention_reference

TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))
from kernel_emu import build as emu_build  # noqa: E402

U32 = 2.0**-24
U16 = 2.0**-11
PAD = 4096  # poisoned elements (bytes for raw allocations) on each side of every guarded buffer


# ----------------------------------------------------------------------------------------------------------------
# The emulated library


class Emu:
    def __init__(self, build: emu_build.EmuBuild):
        self.build = build
        self.ops = cuda_ops.CudaOps(build.lib, host_pointers=True)
        self.lib = self.ops.lib
        self.lib.weakclip_emu_launches.restype = ctypes.c_ulonglong

    def launches(self) -> int:
        return int(self.lib.weakclip_emu_launches())


@pytest.fixture(scope="module")
def emu(tmp_path_factory) -> Emu:
    """Configure (generated header) + compile the EMULATED library once for this module."""
    try:
        b = emu_build.build(tmp_path_factory.mktemp("kernel_emu"))
    except emu_build.EmuUnavailable as e:
        pytest.skip(f"CUDA-emulation build unavailable: {e}")
    return Emu(b)


@pytest.fixture(autouse=True)
def _no_sanitizer_reports(capfd):
    """UBSan (alignment / bounds / overflow) reports go to stderr; any report fails the test."""
    yield
    err = capfd.readouterr().err
    reports = [line for line in err.splitlines() if "runtime error:" in line]
    assert not reports, "undefined behaviour in the emulated kernels:\n" + "\n".join(reports[:20])


# ----------------------------------------------------------------------------------------------------------------
# Poisoned buffers


def guarded(t: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of t in the middle of a NaN-filled buffer (out-of-bounds reads that matter give NaN)."""
    buf = torch.full((t.numel() + 2 * PAD,), float("nan"), dtype=t.dtype)
    view = buf[PAD : PAD + t.numel()].view(t.shape)
    view.copy_(t)
    return view


class _PoisonedTorch:
    """Stands in for ``torch`` inside ``weakclip.engines.cuda_ops`` during one wrapper call: ``empty`` returns the middle of a
    buffer filled with 0xFF bytes (NaN in fp32 and fp16), everything else is the real torch."""

    def __init__(self):
        self.raw: list[tuple[torch.Tensor, int]] = []

    def __getattr__(self, name: str):
        return getattr(torch, name)

    def empty(self, size, *, dtype=None, device=None) -> torch.Tensor:
        shape = (size,) if isinstance(size, int) else tuple(size)
        dtype = dtype or torch.get_default_dtype()
        nbytes = math.prod(shape) * torch.empty((), dtype=dtype).element_size()
        raw = torch.full((nbytes + 2 * PAD,), 0xFF, dtype=torch.uint8, device=device)
        self.raw.append((raw, nbytes))
        return raw[PAD : PAD + nbytes].view(dtype).view(shape)

    def check_guards(self) -> None:
        for raw, nbytes in self.raw:
            for name, pad in (("before", raw[:PAD]), ("after", raw[PAD + nbytes :])):
                bad = (pad != 0xFF).nonzero()
                assert bad.numel() == 0, f"out-of-bounds write {name} a {nbytes}-byte buffer ({bad.numel()} bytes)"


def call(monkeypatch, fn, *args, **kwargs):
    """fn(*args, **kwargs) with the wrapper's allocations poisoned; checks the guard bytes afterwards."""
    poison = _PoisonedTorch()
    with monkeypatch.context() as mp:
        mp.setattr(cuda_ops, "torch", poison)
        out = fn(*args, **kwargs)
    poison.check_guards()
    return out


def assert_within(got: torch.Tensor, ref: torch.Tensor, tol: torch.Tensor | float, what: str) -> None:
    got = got.double()
    nan = int(torch.isnan(got).sum())
    assert nan == 0, f"{what}: {nan} elements NaN (never written, or poisoned by an out-of-bounds read)"
    err = (got - ref).abs()
    tol = torch.as_tensor(tol, dtype=torch.float64).expand_as(err)
    bad = ~(err <= tol)
    ratio = (err / tol).max().item()
    assert not bad.any(), (
        f"{what}: {int(bad.sum())}/{bad.numel()} elements exceed the rounding bound; max |err| "
        f"{err.max().item():.3e}, worst |err|/bound {ratio:.2f} at {tuple(int(i) for i in bad.nonzero()[0])}"
    )


# ----------------------------------------------------------------------------------------------------------------
# Harness


def test_emulated_build(emu):
    """The library under test is the emulated build of the real source, with every launch rewritten."""
    b = emu.build
    assert b.source == emu_build.kernel_source()
    assert b.launch_sites >= 8, f"only {b.launch_sites} <<<...>>> launches rewritten"
    assert emu.lib.weakclip_coattn_check_layout() == 0
    print(f"EMULATED build of {b.source.name}: {b.launch_sites} launch sites, ubsan={b.ubsan}, {b.seconds:.1f} s")


def test_launch_rewrite():
    src = "k<<<g, 256, 0, s>>>(a, b);\nns::k2<T, 4><<<dim3(1, 2), b>>>();\n"
    out, n = emu_build.rewrite_launches(src)
    assert n == 2
    assert out.splitlines() == [
        "::emu::launch(::emu::LaunchConfig{g, 256, 0, s}, k, a, b);",
        "::emu::launch(::emu::LaunchConfig{dim3(1, 2), b}, ns::k2<T, 4>);",
    ]
    with pytest.raises(RuntimeError, match="not rewritten"):
        emu_build.rewrite_launches("k<<<g,\n b>>>(x);")


def test_emulator_self_check(emu, tmp_path, capfd):
    """The emulator itself: a missing __syncthreads gives wrong results, faults are reported (not aborts)."""
    b = emu_build.compile_library(tmp_path, emu_build.EMU_INCLUDE, src=emu_build.HERE / "selftest_kernels.cu")
    lib = ctypes.CDLL(str(b.lib))
    msg = ctypes.create_string_buffer(512)
    x = torch.randn(4 * 256)
    want = x.view(4, 256).flip(1).reshape(-1)
    for sync in (1, 0):
        y = torch.full_like(x, float("nan"))
        assert (
            lib.selftest_reverse(ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(y.data_ptr()), 4, sync, msg, 512) == 0
        )
        assert torch.equal(y, want) == bool(sync), f"sync={sync}: the emulator did not expose the missing barrier"
    out = torch.zeros(64)
    assert lib.selftest_wmma_misaligned(ctypes.c_void_p(out.data_ptr()), msg, 512) != 0
    assert b"not 256-bit aligned" in msg.value, msg.value
    assert lib.selftest_bad_config(msg, 512) != 0
    assert b"invalid launch configuration" in msg.value, msg.value
    if b.ubsan:
        capfd.readouterr()
        assert (
            lib.selftest_float4_misaligned(ctypes.c_void_p(x.data_ptr()), ctypes.c_void_p(out.data_ptr()), msg, 512)
            == 0
        )
        assert "misaligned address" in capfd.readouterr().err  # consumed here: not a failure of this test


# ----------------------------------------------------------------------------------------------------------------
# Flash attention


def attention_reference(q, k, v, scale: float, dtype: torch.dtype):
    """float64 softmax(q kᵀ·scale) v, q (B, Nq, H, D), and the first-order rounding bound (module docstring)."""
    q64, k64, v64 = (x.double().permute(0, 2, 1, 3) for x in (q, k, v))  # (B, H, N, D)
    p = torch.softmax(q64 @ k64.transpose(-1, -2) * scale, dim=-1)
    o = p @ v64
    mag = o.abs() + p @ v64.abs()  # |o| + P|v|
    a_max = ((q64.abs() @ k64.abs().transpose(-1, -2)) * scale).amax(-1, keepdim=True)
    D, nk = q.shape[-1], k.shape[1]
    tol = ((D + 2) * U32 * a_max + 4 * U32 + (nk + 8) * U32) * mag
    if dtype == torch.float16:
        tol = tol + U16 * mag + nk * 2.0**-25 * v64.abs().amax()
    return o.permute(0, 2, 1, 3), (2 * tol).permute(0, 2, 1, 3)


FLASH_CASES = {  # (head dim, Nq, Nk)
    "D16-Nq1-Nk1": (16, 1, 1),
    "D16-Nq37-Nk45": (16, 37, 45),
    "D32-Nq33-Nk3": (32, 33, 3),  # fewer keys than a softmax chunk: masked columns in the only tile
    "D64-Nq70-Nk130": (64, 70, 130),  # partial last query tile and key tile (2 keys) for both kernels
    "D128-Nq40-Nk97": (128, 40, 97),  # D = 128: SIMT kernel for fp16 as well
}
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("case", FLASH_CASES.values(), ids=FLASH_CASES.keys())
def test_flash_attention(emu, monkeypatch, case, dtype):
    D, nq, nk = case
    g = torch.Generator().manual_seed(nq * 1000 + nk)
    B, H = 2, 2
    q, k, v = (guarded(torch.randn(B, n, H, D, generator=g).to(dtype)) for n in (nq, nk, nk))
    o = call(monkeypatch, emu.ops.flash_attention, q, k, v)
    ref, tol = attention_reference(q, k, v, D**-0.5, dtype)
    assert_within(o, ref, tol, f"EMULATED flash attention {dtype} D={D} Nq={nq} Nk={nk}")


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_flash_attention_broadcast_kv_strided_q(emu, monkeypatch, dtype):
    """k / v with batch stride 0 (expand), q a column slice of wider rows (ldq = 3·H·D), explicit scale."""
    g = torch.Generator().manual_seed(7)
    B, H, D, nq, nk = 3, 2, 64, 37, 45
    wide = guarded(torch.randn(B, nq, 3 * H * D, generator=g).to(dtype))
    q = wide[:, :, H * D : 2 * H * D].unflatten(-1, (H, D))
    k = guarded(torch.randn(1, nk, H, D, generator=g).to(dtype)).expand(B, -1, -1, -1)
    v = guarded(torch.randn(1, nk, H, D, generator=g).to(dtype)).expand(B, -1, -1, -1)
    assert k.stride(0) == 0 and q.stride(1) == 3 * H * D
    o = call(monkeypatch, emu.ops.flash_attention, q, k, v, scale=0.3)
    ref, tol = attention_reference(q, k, v, 0.3, dtype)
    assert_within(o, ref, tol, f"EMULATED flash attention broadcast k/v {dtype}")


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_flash_attention_large_logits(emu, monkeypatch, dtype):
    """Logits of +-30: the running max jumps between key tiles, so the rescaling path (alpha << 1) matters."""
    g = torch.Generator().manual_seed(8)
    q = guarded((4 * torch.randn(1, 40, 1, 64, generator=g)).to(dtype))
    k = guarded((4 * torch.randn(1, 300, 1, 64, generator=g)).to(dtype))
    v = guarded(torch.randn(1, 300, 1, 64, generator=g).to(dtype))
    o = call(monkeypatch, emu.ops.flash_attention, q, k, v)
    ref, tol = attention_reference(q, k, v, 0.125, dtype)
    assert_within(o, ref, tol, f"EMULATED flash attention large logits {dtype}")


# ----------------------------------------------------------------------------------------------------------------
# Score map


@pytest.mark.parametrize("shared_text", [False, True], ids=["T*-per-batch", "T*-shared"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_score_map(emu, monkeypatch, dtype, shared_text):
    """B 2, K 21 (> 16-class tile), E 40 (not a multiple of the 32-channel chunk), h·w = 72 (> 64-token tile)."""
    g = torch.Generator().manual_seed(9)
    B, K, E, h, w = 2, 21, 40, 9, 8
    v_star = guarded(torch.randn(B, 1 + h * w, E, generator=g).to(dtype))
    t_shape = (K, E) if shared_text else (B, K, E)
    t_star = guarded(torch.randn(*t_shape, generator=g).to(dtype))
    s = call(monkeypatch, emu.ops.score_map, v_star, t_star, h, w)
    f = torch.nn.functional.normalize(v_star[:, 1:].double(), dim=-1)
    t = torch.nn.functional.normalize(t_star.double(), dim=-1).expand(B, K, E)
    ref = (t @ f.transpose(1, 2)).reshape(B, K, h, w)
    tol = (2 * E + 8) * U32 + (U16 * ref.abs() if dtype == torch.float16 else 0.0)
    assert_within(s, ref, 2 * tol, f"EMULATED score map {dtype}")


# ----------------------------------------------------------------------------------------------------------------
# Full co-attention


def perturbed_module(E: int, W: int, heads: int, layers: int) -> CoAttentionMatching:
    """Non-trivial LayerNorm affines, biases and residual scales (the defaults would hide their indexing)."""
    torch.manual_seed(E * 1000 + W * 10 + layers)
    m = CoAttentionMatching(E, W, heads, layers).eval()
    with torch.no_grad():
        for name, p in m.named_parameters():
            if name.endswith("bias"):
                p.add_(0.05 * torch.randn_like(p))
            elif p.dim() == 1:  # LayerNorm weights, gamma, beta
                p.add_(0.3 * torch.randn_like(p))
    return m


def guarded_weights(ops: cuda_ops.CudaOps, m: CoAttentionMatching, dtype) -> cuda_ops.PreparedWeights:
    pw = ops.prepare_weights(m, dtype, "cpu")
    tensors = [guarded(t) for t in pw.tensors]
    ptrs = (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])
    return cuda_ops.PreparedWeights(tensors, ptrs, pw.dims, pw.heads, dtype, pw.device)


COATTN_CONFIGS = {  # E, W, heads, L   (head dim W / heads)
    "E64-W32-H2-L1": (64, 32, 2, 1),  # Dh 16
    "E64-W32-H2-L3": (64, 32, 2, 3),  # Dh 16, three chained layers per stack
    "E64-W128-H2-L1": (64, 128, 2, 1),  # Dh 64 (tensor-core flash kernel in fp16)
    # Dh 16, 3 heads; K = E = 60 (% 8 != 0): fp16 GEMMs take the scalar-load path; K = W = 48 (% 32 != 0): the
    # 16-byte vector-load path with a partial k-step
    "E60-W48-H3-L1": (60, 48, 3, 1),
}


def coattention_case(config: tuple[int, int, int, int], sizes: tuple[int, int, int, int], seed: int):
    """(perturbed module, g (B, E), dense (B, E, h, w), T (K, E)) for config (E, W, heads, L), sizes (B, K, h, w)."""
    E, W, heads, L = config
    B, K, h, w = sizes
    gen = torch.Generator().manual_seed(seed)
    g, dense, T = (
        torch.randn(B, E, generator=gen),
        torch.randn(B, E, h, w, generator=gen),
        torch.randn(K, E, generator=gen),
    )
    return perturbed_module(E, W, heads, L), g, dense, T


@pytest.mark.parametrize("layout", ["tokens", "split"])
@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
@pytest.mark.parametrize("config", COATTN_CONFIGS.values(), ids=COATTN_CONFIGS.keys())
def test_coattention(emu, monkeypatch, config, dtype, layout):
    """Full launcher vs ``coattention_reference`` (float64); B 2, K 6, h·w = 5·7 = 35 (N = 36)."""
    E, W, heads, L = config
    B, K, h, w = 2, 6, 5, 7
    m, g, dense, T = coattention_case(config, (B, K, h, w), seed=3)
    sd64 = {k: v.double() for k, v in m.state_dict().items()}
    ref = coattention_reference(sd64, g.double(), dense.double(), T.double(), heads=heads, layers=L)

    pw = guarded_weights(emu.ops, m, dtype)
    g_, dense_, T_ = g.to(dtype), dense.to(dtype), guarded(T.to(dtype))
    launches = emu.launches()
    if layout == "tokens":
        V = guarded(torch.cat([g_[:, None], dense_.flatten(2).transpose(1, 2)], dim=1))  # (B, 1 + h·w, E)
        S = call(monkeypatch, emu.ops.coattention, pw, V, T_, grid=(h, w))
    else:
        S = call(monkeypatch, emu.ops.coattention, pw, g=guarded(g_), dense=guarded(dense_), T=T_)
    assert emu.launches() > launches, "no emulated kernel launch happened"
    assert S.shape == (B, K, h, w) and S.dtype == dtype
    what = f"EMULATED co-attention {dtype} {layout} E={E} W={W} heads={heads} L={L}"
    if dtype == torch.float32:
        assert_within(S, ref, 2e-5, what)
    else:
        m16 = perturbed_module(E, W, heads, L).half()
        with torch.no_grad():
            S16 = m16(g_, dense_, T.half())[0]
        err_torch = (S16.double() - ref).abs().max().item()
        assert_within(S, ref, max(2 * err_torch, 2e-3), f"{what} (PyTorch fp16 module error {err_torch:.2e})")


def test_fused_coattention_module_is_a_drop_in(emu, monkeypatch):
    """``cuda_ops.FusedCoAttention`` (what benchmarks/bench_gpu_e2e.py swaps into the model) returns what
    ``CoAttentionMatching.forward`` returns: S, T* and F* in the module's layouts (EMULATED kernels, fp32)."""
    m, g, dense, T = coattention_case(COATTN_CONFIGS["E60-W48-H3-L1"], (2, 6, 5, 7), seed=5)
    with torch.no_grad():
        S_ref, T_ref, F_ref = m.double()(g.double(), dense.double(), T.double())
    m.float()
    fused = cuda_ops.FusedCoAttention(m, torch.float32, ops=emu.ops)
    S, T_star, F_star = call(monkeypatch, fused, g, dense.half(), T)  # inputs of another dtype are cast
    assert (S.shape, T_star.shape, F_star.shape) == (S_ref.shape, T_ref.shape, F_ref.shape)
    assert S.dtype == T_star.dtype == F_star.dtype == torch.float32
    assert_within(S, S_ref, 2e-3, "EMULATED FusedCoAttention S (fp16-rounded dense input)")
    # T* and F* are E-dim embeddings of O(1) size: the same fp16 input rounding bound, scaled
    assert_within(T_star, T_ref, 2e-3 * (1 + T_ref.abs()), "EMULATED FusedCoAttention T*")
    assert_within(F_star, F_ref, 2e-3 * (1 + F_ref.abs()), "EMULATED FusedCoAttention F*")
    with pytest.raises(TypeError, match="bfloat16"):
        cuda_ops.FusedCoAttention(m, torch.bfloat16, ops=emu.ops)
