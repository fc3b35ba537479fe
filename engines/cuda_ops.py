"""ctypes loader and torch wrappers for the fused CUDA co-attention library (``libweakclip_coattn.so``, built from
``engines/csrc/coattn_kernel.cu``).  The wrappers take fp32 or fp16 tensors on one CUDA device and enqueue work on
the current torch stream; nothing touches CUDA at import time.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from weakclip.model.plugin_names import CoAttnDims, ordered_weights, state_dict_of

REPO_ROOT = Path(__file__).resolve().parents[1]
LIB_ENV = "WEAKCLIP_CUDA_LIB"
BUILD_COMMAND = "cmake -S . -B build && cmake --build build -j"
PARAMS_VERSION = 1  # WEAKCLIP_COATTN_PARAMS_VERSION in coattn_kernel.h

_DTYPES = {torch.float32: 0, torch.float16: 1}


class CudaOpsUnavailable(RuntimeError):
    """The CUDA co-attention library is missing or unusable (the message says how to build it)."""


class _Params(ctypes.Structure):
    """Mirror of ``WeakclipCoAttnParams`` (coattn_kernel.h); size checked against the library at load."""

    _fields_ = [
        *[(f, ctypes.c_int32) for f in ("version", "dtype", "batch", "grid_h", "grid_w", "num_classes")],
        *[(f, ctypes.c_int32) for f in ("embed_dim", "width", "heads", "layers", "mlp_hidden")],
        ("ln_eps", ctypes.c_float),
        *[(f, ctypes.c_void_p) for f in ("visual", "global_emb", "dense", "text")],
        ("weights", ctypes.POINTER(ctypes.c_void_p)),
        ("num_weights", ctypes.c_int32),
        ("reserved0", ctypes.c_int32),
        *[(f, ctypes.c_void_p) for f in ("score", "v_star", "t_star", "workspace")],
        ("workspace_size", ctypes.c_size_t),
    ]


def _declare(lib: ctypes.CDLL) -> None:
    i32, i64, f32, vp, sz = ctypes.c_int32, ctypes.c_int64, ctypes.c_float, ctypes.c_void_p, ctypes.c_size_t
    pp = ctypes.POINTER(_Params)
    sigs = {
        "weakclip_coattn_params_size": (sz, []),
        "weakclip_coattn_workspace_size": (sz, [pp]),
        "weakclip_coattn_num_weights": (i32, [i32]),
        "weakclip_coattn_weight_name": (ctypes.c_char_p, [i32, i32]),
        "weakclip_coattn_weight_numel": (i64, [i32, i32, i32, i32, i32]),
        "weakclip_coattn_check_layout": (i32, []),
        "weakclip_coattn_forward": (i32, [pp, vp]),
        "weakclip_flash_attention": (i32, [vp, vp, vp, vp] + [i32] * 5 + [i64] * 8 + [f32, i32, vp]),
        "weakclip_score_map": (i32, [vp, vp, vp] + [i32] * 5 + [i64, i32, i64, i32, vp]),
        "weakclip_last_error": (ctypes.c_char_p, []),
    }
    for name, (res, args) in sigs.items():
        fn = getattr(lib, name)
        fn.restype = res
        fn.argtypes = args


@dataclass
class PreparedWeights:
    """Weights converted once to a dtype/device, with the pointer array the launcher reads (reuse across calls)."""

    tensors: list[torch.Tensor]
    pointers: ctypes.Array
    dims: CoAttnDims
    heads: int
    dtype: torch.dtype
    device: torch.device


class CudaOps:
    """One loaded library (``path``: default ``$WEAKCLIP_CUDA_LIB``, else ``<repo>/build/libweakclip_coattn.so``).
    ``host_pointers=True`` is only for a CPU build of the same source (the launcher without a GPU): CPU tensors."""

    def __init__(self, path: str | os.PathLike | None = None, *, host_pointers: bool = False):
        default = os.environ.get(LIB_ENV) or REPO_ROOT / "build" / "libweakclip_coattn.so"
        self.path = Path(path if path is not None else default)
        self.host_pointers = host_pointers
        if not self.path.is_file():
            raise CudaOpsUnavailable(
                f"CUDA co-attention library not found at {self.path}. Build it from the repository root with\n"
                f"    {BUILD_COMMAND}\n"
                f"(needs nvcc and CMake >= 3.19; see engines/csrc/README.md) or point ${LIB_ENV} at an existing build."
            )
        try:
            self.lib = ctypes.CDLL(str(self.path))
            _declare(self.lib)
        except (OSError, AttributeError) as e:
            raise CudaOpsUnavailable(f"cannot load {self.path}: {e}. Rebuild with: {BUILD_COMMAND}") from e
        if self.lib.weakclip_coattn_params_size() != ctypes.sizeof(_Params):
            raise CudaOpsUnavailable(
                f"{self.path}: WeakclipCoAttnParams is {self.lib.weakclip_coattn_params_size()} bytes, the Python "
                f"mirror {ctypes.sizeof(_Params)}: the library and engines/cuda_ops.py are out of sync; rebuild."
            )

    def _check(self, status: int, what: str) -> None:
        if status != 0:
            msg = self.lib.weakclip_last_error().decode(errors="replace")
            raise RuntimeError(f"{what} failed (status {status}): {msg}")

    def _device_tensor(self, t: torch.Tensor, name: str) -> None:
        want = "cpu" if self.host_pointers else "cuda"
        if t.device.type != want:
            raise ValueError(f"{name} must be a {want} tensor, got {t.device}")
        if t.dtype not in _DTYPES:
            raise TypeError(f"{name}: dtype {t.dtype} not supported (float32 or float16)")

    def _stream(self, device: torch.device) -> int | None:
        return None if self.host_pointers else torch.cuda.current_stream(device).cuda_stream

    def _guard(self, device: torch.device):
        return contextlib.nullcontext() if self.host_pointers else torch.cuda.device(device)

    # Introspection: host-only library functions, safe without a GPU.

    def weight_names(self, layers: int) -> list[str]:
        """The library's own expanded weight order (compiled from plugin_names.json)."""
        n = self.lib.weakclip_coattn_num_weights(layers)
        return [self.lib.weakclip_coattn_weight_name(i, layers).decode() for i in range(n)]

    def weight_numels(self, layers: int, embed_dim: int, width: int, mlp_hidden: int) -> list[int]:
        n = self.lib.weakclip_coattn_num_weights(layers)
        return [self.lib.weakclip_coattn_weight_numel(i, layers, embed_dim, width, mlp_hidden) for i in range(n)]

    def workspace_size(
        self,
        *,
        batch: int,
        grid_h: int,
        grid_w: int,
        num_classes: int,
        dims: CoAttnDims,
        heads: int,
        dtype: torch.dtype = torch.float32,
        split_visual: bool = False,
    ) -> int:
        """Workspace bytes of one forward (``split_visual``: g + F given instead of tokens)."""
        p = self._params(batch, grid_h, grid_w, num_classes, dims, heads, dtype, 1e-5)
        if not split_visual:
            p.visual = 1  # any non-null value: only the presence matters here
        return int(self.lib.weakclip_coattn_workspace_size(ctypes.byref(p)))

    def _params(self, batch, grid_h, grid_w, num_classes, dims: CoAttnDims, heads, dtype, eps) -> _Params:
        p = _Params(PARAMS_VERSION, _DTYPES[dtype], batch, grid_h, grid_w, num_classes, dims.embed_dim, dims.width)
        p.heads, p.layers, p.mlp_hidden, p.ln_eps = heads, dims.layers, dims.mlp_hidden, eps
        return p

    def flash_attention(
        self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None
    ) -> torch.Tensor:
        """softmax(q kᵀ · scale) v per (batch, head): q (B, Nq, H, Dh), k/v (B, Nk, H, Dh) -> (B, Nq, H, Dh).

        Each token's (H, Dh) block must be contiguous; token and batch strides are free (a batch stride of 0, e.g.
        from ``expand``, shares k/v over the batch).  Dh in {16, 32, 64, 128}; scale defaults to Dh^-½.
        """
        for name, t in (("q", q), ("k", k), ("v", v)):
            self._device_tensor(t, name)
            if t.dim() != 4:
                raise ValueError(f"{name} must be (B, N, H, Dh), got shape {tuple(t.shape)}")
            if t.stride(3) != 1 or t.stride(2) != t.shape[3]:
                raise ValueError(f"{name}: each token's (H, Dh) block must be contiguous (strides {t.stride()})")
        if not (q.dtype == k.dtype == v.dtype):
            raise TypeError("q, k, v must share a dtype")
        B, Nq, H, D = q.shape
        if k.shape[0] != B or k.shape[2:] != (H, D) or v.shape != k.shape:
            raise ValueError(f"shapes q {tuple(q.shape)}, k {tuple(k.shape)}, v {tuple(v.shape)} do not match")
        scale = D**-0.5 if scale is None else float(scale)
        o = torch.empty((B, Nq, H, D), dtype=q.dtype, device=q.device)
        qkvo = (q, k, v, o)
        args = [*(t.data_ptr() for t in qkvo), B, H, Nq, k.shape[1], D]
        args += [t.stride(1) for t in qkvo] + [t.stride(0) for t in qkvo]  # token strides, then batch strides
        with self._guard(q.device):
            st = self.lib.weakclip_flash_attention(*args, scale, _DTYPES[q.dtype], self._stream(q.device))
        self._check(st, "weakclip_flash_attention")
        return o

    def score_map(self, v_star: torch.Tensor, t_star: torch.Tensor, h: int, w: int) -> torch.Tensor:
        """S[b, k] = cos(V*[b, N - h·w + i], T*[b, k]) -> (B, K, h, w): V* (B, N, E), T* (B, K, E) or (K, E)."""
        self._device_tensor(v_star, "v_star")
        self._device_tensor(t_star, "t_star")
        if v_star.dtype != t_star.dtype:
            raise TypeError("v_star and t_star must share a dtype")
        B, N, E = v_star.shape
        if N < h * w:
            raise ValueError(f"v_star has {N} tokens < h·w = {h * w}")
        batched = t_star.dim() != 2  # (K, E) is shared over the batch (batch stride 0)
        if batched and t_star.shape[0] != B:
            raise ValueError("t_star batch differs from v_star")
        if not batched or not t_star[0].is_contiguous():
            t_star = t_star.contiguous()
        t_bs = t_star.stride(0) if batched else 0
        if t_star.shape[-1] != E:
            raise ValueError(f"embed dims differ: v_star {E}, t_star {t_star.shape[-1]}")
        v_star = v_star if v_star[0].is_contiguous() else v_star.contiguous()
        K = t_star.shape[-2]
        s = torch.empty((B, K, h, w), dtype=v_star.dtype, device=v_star.device)
        ptrs = [t.data_ptr() for t in (v_star, t_star, s)]
        args = [*ptrs, B, K, E, h, w, v_star.stride(0), N - h * w, t_bs, _DTYPES[v_star.dtype]]
        with self._guard(v_star.device):
            st = self.lib.weakclip_score_map(*args, self._stream(v_star.device))
        self._check(st, "weakclip_score_map")
        return s

    def prepare_weights(
        self, weights: Any, dtype: torch.dtype, device: torch.device | str, heads: int | None = None
    ) -> PreparedWeights:
        """Convert a ``CoAttentionMatching`` module / state dict once for repeated ``coattention`` calls."""
        heads = getattr(weights, "heads", None) if heads is None else heads
        if heads is None:
            raise ValueError("heads is required when weights is a state dict")
        tensors, dims = ordered_weights(weights)
        tensors = [t.to(device=device, dtype=dtype).contiguous() for t in tensors]
        device = tensors[0].device  # the concrete device ("cuda" -> "cuda:0"), compared with the inputs' later
        ptrs = (ctypes.c_void_p * len(tensors))(*[t.data_ptr() for t in tensors])
        return PreparedWeights(tensors, ptrs, dims, int(heads), dtype, device)

    def coattention(
        self,
        weights: Any,
        V: torch.Tensor | None = None,
        T: torch.Tensor | None = None,
        *,
        g: torch.Tensor | None = None,
        dense: torch.Tensor | None = None,
        grid: tuple[int, int] | None = None,
        heads: int | None = None,
        eps: float = 1e-5,
        return_stars: bool = False,
    ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Fused co-attention matching -> S (B, K, h, w) [, V* (B, N, E), T* (B, K, E)].

        weights: a ``weakclip.model.coattention.CoAttentionMatching``, its state dict (then ``heads`` is required) or
        ``prepare_weights(...)``.  Visual input: V (B, 1 + h·w, E) tokens with ``grid=(h, w)`` (a square grid is
        inferred when omitted), or g (B, E) with dense F (B, E, h, w).  T (K, E).  The dtype of the visual input
        selects fp32 / fp16; the weights are converted to it.
        """
        if T is None:
            raise ValueError("T (K, E) is required")
        if (V is None) == (g is None or dense is None):
            raise ValueError("give either V or both g and dense")
        x = V if V is not None else dense
        assert x is not None  # checked above
        self._device_tensor(x, "V" if V is not None else "dense")
        dtype, device = x.dtype, x.device
        if V is not None:
            B, N, E = V.shape
            if grid is None:
                side = math.isqrt(N - 1)
                if side * side != N - 1:
                    raise ValueError(f"cannot infer a square grid from N = {N}; pass grid=(h, w)")
                grid = (side, side)
            gh, gw = grid
            if N != 1 + gh * gw:
                raise ValueError(f"V has N = {N} tokens but grid {grid} needs 1 + h·w = {1 + gh * gw}")
            visual = V.contiguous()
            g_ptr = dense_ptr = None
        else:
            assert g is not None and dense is not None  # checked above
            B, E, gh, gw = dense.shape
            if tuple(g.shape) != (B, E) or g.dtype != dtype or g.device != device:
                raise ValueError(f"g must be ({B}, {E}) {dtype} on {device}")
            visual = None
            g_c, dense_c = g.contiguous(), dense.contiguous()
            g_ptr, dense_ptr = g_c.data_ptr(), dense_c.data_ptr()
        if T.dim() != 2 or T.shape[1] != E:
            raise ValueError(f"T must be (K, {E}), got {tuple(T.shape)}")
        T = T.to(device=device, dtype=dtype).contiguous()
        K = T.shape[0]

        pw = weights if isinstance(weights, PreparedWeights) else self.prepare_weights(weights, dtype, device, heads)
        if pw.dtype != dtype or pw.device != device:
            raise ValueError(f"prepared weights are {pw.dtype} on {pw.device}, inputs {dtype} on {device}")
        if pw.dims.embed_dim != E:
            raise ValueError(f"weights expect embed dim {pw.dims.embed_dim}, inputs have {E}")

        p = self._params(B, gh, gw, K, pw.dims, pw.heads, dtype, eps)
        p.visual = visual.data_ptr() if visual is not None else None
        p.global_emb, p.dense, p.text = g_ptr, dense_ptr, T.data_ptr()
        p.weights = ctypes.cast(pw.pointers, ctypes.POINTER(ctypes.c_void_p))
        p.num_weights = len(pw.tensors)
        S = torch.empty((B, K, gh, gw), dtype=dtype, device=device)
        p.score = S.data_ptr()
        if return_stars:
            v_star = torch.empty((B, 1 + gh * gw, E), dtype=dtype, device=device)
            t_star = torch.empty((B, K, E), dtype=dtype, device=device)
            p.v_star, p.t_star = v_star.data_ptr(), t_star.data_ptr()
        nbytes = int(self.lib.weakclip_coattn_workspace_size(ctypes.byref(p)))
        if nbytes == 0:
            self._check(1, "weakclip_coattn_workspace_size")
        ws = torch.empty(nbytes, dtype=torch.uint8, device=device)
        p.workspace, p.workspace_size = ws.data_ptr(), nbytes
        with self._guard(device):
            st = self.lib.weakclip_coattn_forward(ctypes.byref(p), self._stream(device))
        self._check(st, "weakclip_coattn_forward")
        return (S, v_star, t_star) if return_stars else S


class FusedCoAttention(torch.nn.Module):
    """Inference drop-in for ``weakclip.model.coattention.CoAttentionMatching`` running the fused kernels:
    ``forward(g (B, E), dense (B, E, h, w), T (K, E)) -> (S (B, K, h, w), T* (B, K, E), F* (B, E, h, w))``.

    The weights are converted once to ``dtype`` (float16 or float32; the kernels have no bfloat16 path) on the
    module's device; inputs are cast to ``dtype``, outputs are ``dtype``.  No autograd.
    """

    def __init__(
        self, module: Any, dtype: torch.dtype = torch.float16, ops: CudaOps | None = None, eps: float = 1e-5
    ) -> None:
        super().__init__()
        if dtype not in _DTYPES:
            raise TypeError(f"FusedCoAttention: dtype {dtype} not supported (float32 or float16)")
        self.ops = ops if ops is not None else load()
        self.dtype, self.eps = dtype, float(eps)
        device = next(iter(state_dict_of(module).values())).device
        self.prepared = self.ops.prepare_weights(module, dtype, device, getattr(module, "heads", None))

    def forward(self, g: torch.Tensor, dense: torch.Tensor, T: torch.Tensor):
        B, E, h, w = dense.shape
        dt = self.dtype
        S, v_star, t_star = self.ops.coattention(
            self.prepared, T=T.to(dt), g=g.to(dt), dense=dense.to(dt), eps=self.eps, return_stars=True
        )
        return S, t_star, v_star[:, 1:].transpose(1, 2).reshape(B, E, h, w)


_default = functools.cache(CudaOps)  # the default library, loaded once


def load(path: str | os.PathLike | None = None) -> CudaOps:
    """The default ``CudaOps`` (loaded once), or a fresh one for an explicit ``path``."""
    return CudaOps(path) if path is not None else _default()
