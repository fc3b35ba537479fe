"""ctypes loader and torch wrappers for the fused CUDA co-attention library (``libweakclip_coattn.so``).

The library is built from ``engines/csrc/coattn_kernel.cu`` by the top-level ``CMakeLists.txt``::

    cmake -S . -B build && cmake --build build -j        # -> build/libweakclip_coattn.so

and found at ``build/libweakclip_coattn.so`` or at ``$WEAKCLIP_CUDA_LIB``.  Nothing here touches CUDA at import time:
the plugin-layout helpers (``plugin_spec``, ``packed_weight_names``, ``pack_coattention_weights``, from
:mod:`weakclip.model.plugin_names`) work on any machine; the tensor wrappers need the library and a GPU.

Wrappers (tensors on one CUDA device, fp32 or fp16, work enqueued on the current torch stream):

* ``flash_attention(q, k, v, scale)`` — q (B, Nq, H, Dh), k/v (B, Nk, H, Dh) -> (B, Nq, H, Dh)
* ``score_map(v_star, t_star, h, w)`` — V* (B, 1 + h·w, E), T* (B, K, E) or (K, E) -> S (B, K, h, w)
* ``coattention(weights, V, T, ...)`` — the full co-attention matching -> S (B, K, h, w) [, V*, T*]
"""

from __future__ import annotations

import ctypes
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

# Plugin identity and packed-weight layout (plugin_names.json, no CUDA needed): shared with the exporter, which does
# not import engines, and re-exported here (listed in __all__).
from weakclip.model.plugin_names import (
    CoAttnDims,
    coattention_dims,
    ordered_weights,
    pack_coattention_weights,
    packed_weight_entries,
    packed_weight_names,
    packed_weight_shapes,
    plugin_spec,
    state_dict_of,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
LIB_ENV = "WEAKCLIP_CUDA_LIB"
BUILD_COMMAND = "cmake -S . -B build && cmake --build build -j"
PARAMS_VERSION = 1  # WEAKCLIP_COATTN_PARAMS_VERSION in coattn_kernel.h

_DTYPES = {torch.float32: 0, torch.float16: 1}


class CudaOpsUnavailable(RuntimeError):
    """The CUDA co-attention library is missing or unusable (the message says how to build it)."""


# ----------------------------------------------------------------------------------------------------------------
# The shared library.


class _Params(ctypes.Structure):
    """Mirror of ``WeakclipCoAttnParams`` (coattn_kernel.h); size checked against the library at load."""

    _fields_ = [
        ("version", ctypes.c_int32),
        ("dtype", ctypes.c_int32),
        ("batch", ctypes.c_int32),
        ("grid_h", ctypes.c_int32),
        ("grid_w", ctypes.c_int32),
        ("num_classes", ctypes.c_int32),
        ("embed_dim", ctypes.c_int32),
        ("width", ctypes.c_int32),
        ("heads", ctypes.c_int32),
        ("layers", ctypes.c_int32),
        ("mlp_hidden", ctypes.c_int32),
        ("ln_eps", ctypes.c_float),
        ("visual", ctypes.c_void_p),
        ("global_emb", ctypes.c_void_p),
        ("dense", ctypes.c_void_p),
        ("text", ctypes.c_void_p),
        ("weights", ctypes.POINTER(ctypes.c_void_p)),
        ("num_weights", ctypes.c_int32),
        ("reserved0", ctypes.c_int32),
        ("score", ctypes.c_void_p),
        ("v_star", ctypes.c_void_p),
        ("t_star", ctypes.c_void_p),
        ("workspace", ctypes.c_void_p),
        ("workspace_size", ctypes.c_size_t),
    ]


def default_library_path() -> Path:
    """``$WEAKCLIP_CUDA_LIB`` if set, else ``<repo>/build/libweakclip_coattn.so``."""
    env = os.environ.get(LIB_ENV)
    return Path(env) if env else REPO_ROOT / "build" / "libweakclip_coattn.so"


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
    """Handle on one loaded library.

    ``host_pointers=True`` is only for a library built to operate on host memory (a CPU build of the same source
    used to exercise the launcher without a GPU); tensors are then CPU tensors and no stream is passed.  The normal
    CUDA build takes CUDA tensors.
    """

    def __init__(self, path: str | os.PathLike | None = None, *, host_pointers: bool = False):
        self.path = Path(path) if path is not None else default_library_path()
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

    # -- helpers ---------------------------------------------------------------------------------------------------

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
        if self.host_pointers:
            import contextlib

            return contextlib.nullcontext()
        return torch.cuda.device(device)

    # -- introspection (host-only functions; safe without a GPU) ---------------------------------------------------

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
        p = _Params()
        p.version = PARAMS_VERSION
        p.dtype = _DTYPES[dtype]
        p.batch, p.grid_h, p.grid_w, p.num_classes = batch, grid_h, grid_w, num_classes
        p.embed_dim, p.width, p.heads, p.layers, p.mlp_hidden = (
            dims.embed_dim,
            dims.width,
            heads,
            dims.layers,
            dims.mlp_hidden,
        )
        p.ln_eps = eps
        return p

    # -- wrappers ----------------------------------------------------------------------------------------------------

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
        with self._guard(q.device):
            st = self.lib.weakclip_flash_attention(
                q.data_ptr(),
                k.data_ptr(),
                v.data_ptr(),
                o.data_ptr(),
                B,
                H,
                Nq,
                k.shape[1],
                D,
                q.stride(1),
                k.stride(1),
                v.stride(1),
                o.stride(1),
                q.stride(0),
                k.stride(0),
                v.stride(0),
                o.stride(0),
                scale,
                _DTYPES[q.dtype],
                self._stream(q.device),
            )
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
        if t_star.dim() == 2:
            t_star = t_star.contiguous()
            t_bs = 0
        else:
            if t_star.shape[0] != B:
                raise ValueError("t_star batch differs from v_star")
            t_star = t_star if t_star[0].is_contiguous() else t_star.contiguous()
            t_bs = t_star.stride(0)
        if t_star.shape[-1] != E:
            raise ValueError(f"embed dims differ: v_star {E}, t_star {t_star.shape[-1]}")
        v_star = v_star if v_star[0].is_contiguous() else v_star.contiguous()
        K = t_star.shape[-2]
        s = torch.empty((B, K, h, w), dtype=v_star.dtype, device=v_star.device)
        with self._guard(v_star.device):
            st = self.lib.weakclip_score_map(
                v_star.data_ptr(),
                t_star.data_ptr(),
                s.data_ptr(),
                B,
                K,
                E,
                h,
                w,
                v_star.stride(0),
                N - h * w,
                t_bs,
                _DTYPES[v_star.dtype],
                self._stream(v_star.device),
            )
        self._check(st, "weakclip_score_map")
        return s

    def prepare_weights(
        self, weights: Any, dtype: torch.dtype, device: torch.device | str, heads: int | None = None
    ) -> PreparedWeights:
        """Convert a ``CoAttentionMatching`` module / state dict once for repeated ``coattention`` calls."""
        if heads is None:
            heads = getattr(weights, "heads", None)
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
        p.global_emb, p.dense = g_ptr, dense_ptr
        p.text = T.data_ptr()
        p.weights = ctypes.cast(pw.pointers, ctypes.POINTER(ctypes.c_void_p))
        p.num_weights = len(pw.tensors)
        S = torch.empty((B, K, gh, gw), dtype=dtype, device=device)
        p.score = S.data_ptr()
        v_star = t_star = None
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
        if v_star is None or t_star is None:
            return S
        return S, v_star, t_star


class FusedCoAttention(torch.nn.Module):
    """Inference drop-in for ``weakclip.model.coattention.CoAttentionMatching`` running the fused kernels:
    ``forward(g (B, E), dense (B, E, h, w), T (K, E)) -> (S (B, K, h, w), T* (B, K, E), F* (B, E, h, w))``.

    The weights are converted once to ``dtype`` (float16 or float32; the kernels have no bfloat16 path) on the
    module's device; inputs are cast to ``dtype`` (e.g. fp32 LayerNorm outputs under autocast), outputs are
    ``dtype``.  No autograd.  Swap it in with ``model.coattention = FusedCoAttention(model.coattention)``.
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
        S, v_star, t_star = self.ops.coattention(
            self.prepared,
            T=T.to(self.dtype),
            g=g.to(self.dtype),
            dense=dense.to(self.dtype),
            eps=self.eps,
            return_stars=True,
        )
        F_star = v_star[:, 1:].transpose(1, 2).reshape(B, E, h, w)
        return S, t_star, F_star


# ----------------------------------------------------------------------------------------------------------------
# Module-level convenience (default library).

_default: CudaOps | None = None


def load(path: str | os.PathLike | None = None) -> CudaOps:
    """The default ``CudaOps`` (loaded once), or a fresh one for an explicit ``path``."""
    global _default
    if path is not None:
        return CudaOps(path)
    if _default is None:
        _default = CudaOps()
    return _default


def is_available() -> bool:
    """True when the library loads and torch sees a CUDA device."""
    if not torch.cuda.is_available():
        return False
    try:
        load()
    except CudaOpsUnavailable:
        return False
    return True


def flash_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float | None = None) -> torch.Tensor:
    """See ``CudaOps.flash_attention``."""
    return load().flash_attention(q, k, v, scale)


def score_map(v_star: torch.Tensor, t_star: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """See ``CudaOps.score_map``."""
    return load().score_map(v_star, t_star, h, w)


def coattention(weights: Any, V: torch.Tensor | None = None, T: torch.Tensor | None = None, **kwargs: Any):
    """See ``CudaOps.coattention``."""
    return load().coattention(weights, V, T, **kwargs)


__all__: Sequence[str] = (
    "BUILD_COMMAND",
    "CoAttnDims",
    "CudaOps",
    "CudaOpsUnavailable",
    "FusedCoAttention",
    "PreparedWeights",
    "coattention",
    "coattention_dims",
    "default_library_path",
    "flash_attention",
    "is_available",
    "load",
    "ordered_weights",
    "pack_coattention_weights",
    "packed_weight_entries",
    "packed_weight_names",
    "packed_weight_shapes",
    "plugin_spec",
    "score_map",
)
