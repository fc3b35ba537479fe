"""Co-attention matching (text↔image decoder stacks, residual scales γ/β, cosine score map) and, beside it,
``coattention_reference``: the same from a state dict with explicit matmul–softmax–matmul, the CUDA kernel's oracle.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class Attention(nn.Module):
    """Multi-head attention, q/k/v without bias, output projection with bias + dropout."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.q_proj = nn.Linear(dim, dim, bias=False)
        self.k_proj = nn.Linear(dim, dim, bias=False)
        self.v_proj = nn.Linear(dim, dim, bias=False)
        self.proj = nn.Linear(dim, dim)
        self.proj_drop = nn.Dropout(dropout)

    def forward(self, q: torch.Tensor, kv: torch.Tensor) -> torch.Tensor:
        """q (B, Nq, C), kv (B, Nk, C) → (B, Nq, C)."""
        B, Nq, C = q.shape
        Nk = kv.shape[1]
        nh, hd = self.heads, C // self.heads
        q = self.q_proj(q).reshape(B, Nq, nh, hd).transpose(1, 2)  # (B, nh, Nq, hd)
        k = self.k_proj(kv).reshape(B, Nk, nh, hd).transpose(1, 2)  # (B, nh, Nk, hd)
        v = self.v_proj(kv).reshape(B, Nk, nh, hd).transpose(1, 2)  # (B, nh, Nk, hd)
        x = F.scaled_dot_product_attention(q, k, v, scale=self.scale)  # (B, nh, Nq, hd)
        x = x.transpose(1, 2).reshape(B, Nq, C)
        return self.proj_drop(self.proj(x))


class DecoderLayer(nn.Module):
    """Pre-norm layer: x += SelfAttn(LN1 x); x += CrossAttn(LN2 x, memory); x += Dropout(MLP(LN3 x))."""

    def __init__(self, dim: int, heads: int, mlp_ratio: int, dropout: float):
        super().__init__()
        self.self_attn = Attention(dim, heads, dropout)
        self.cross_attn = Attention(dim, heads, dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)
        self.mlp = nn.Sequential(
            nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Dropout(dropout), nn.Linear(dim * mlp_ratio, dim)
        )

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        """x (B, Nq, C) queries, memory (B, Nk, C) (not re-normalised) → (B, Nq, C)."""
        h = self.norm1(x)
        x = x + self.self_attn(h, h)
        x = x + self.cross_attn(self.norm2(x), memory)
        return x + self.dropout(self.mlp(self.norm3(x)))


class CoAttentionMatching(nn.Module):
    """forward(g (B, E), F (B, E, h, w), T (K, E)) -> (S (B, K, h, w), T* (B, K, E), F* (B, E, h, w)).

    V = [g; flatten(F)] (B, 1 + h·w, E).  Text→image stack (queries T′, memory V′) gives ΔT, image→text stack
    (queries V′, memory T′) gives ΔV; T* = T + γ⊙ΔT, V* = V + β⊙ΔV; S = cos(F*, T*) with F* = V*[:, 1:].
    """

    def __init__(
        self,
        embed_dim: int,
        width: int,
        heads: int,
        layers: int,
        mlp_ratio: int = 4,
        dropout: float = 0.1,
        residual_init: float = 0.1,
    ):
        super().__init__()
        self.memory_proj = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, width), nn.LayerNorm(width))
        self.text_proj = nn.Sequential(nn.LayerNorm(embed_dim), nn.Linear(embed_dim, width))
        self.text_decoder = nn.ModuleList([DecoderLayer(width, heads, mlp_ratio, dropout) for _ in range(layers)])
        self.text_out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, embed_dim))
        self.visual_decoder = nn.ModuleList([DecoderLayer(width, heads, mlp_ratio, dropout) for _ in range(layers)])
        self.visual_out = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, embed_dim))
        self.apply(_init_weights)
        self.gamma = nn.Parameter(torch.full((embed_dim,), residual_init))  # text residual scale γ
        self.beta = nn.Parameter(torch.full((embed_dim,), residual_init))  # visual residual scale β
        self.heads = heads

    def match(self, V: torch.Tensor, T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """V (B, N, E), T (K, E) or (B, K, E) → (V* (B, N, E), T* (B, K, E))."""
        B = V.shape[0]
        if T.dim() == 2:
            T = T.unsqueeze(0).expand(B, -1, -1)  # (B, K, E)
        mem = self.memory_proj(V)  # V′ (B, N, C)
        txt = self.text_proj(T)  # T′ (B, K, C)
        t = txt
        for layer in self.text_decoder:  # chained: each layer takes the previous output
            t = layer(t, mem)
        v = mem
        for layer in self.visual_decoder:
            v = layer(v, txt)
        T_star = T + self.gamma * self.text_out(t)
        V_star = V + self.beta * self.visual_out(v)
        return V_star, T_star

    def forward(
        self, g: torch.Tensor, dense: torch.Tensor, T: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        B, E, h, w = dense.shape
        V = torch.cat([g.unsqueeze(1), dense.flatten(2).transpose(1, 2)], dim=1)  # (B, 1 + h·w, E)
        V_star, T_star = self.match(V, T)
        F_star = V_star[:, 1:].transpose(1, 2).reshape(B, E, h, w)  # (B, E, h, w)
        return score_map(F_star, T_star), T_star, F_star


def score_map(F_star: torch.Tensor, T_star: torch.Tensor) -> torch.Tensor:
    """S[b, k, y, x] = cos(F*[b, :, y, x], T*[b, k, :]): F* (B, E, h, w), T* (B, K, E) → (B, K, h, w)."""
    f = F.normalize(F_star, dim=1)
    t = F.normalize(T_star, dim=2)
    return torch.einsum("behw,bke->bkhw", f, t)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# Plain reference (test oracle): the same computation from a state dict, explicit attention, no dropout.


def _ln(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    return F.layer_norm(x, x.shape[-1:], sd[f"{name}.weight"], sd[f"{name}.bias"], eps=1e-5)


def _lin(x: torch.Tensor, sd: dict, name: str) -> torch.Tensor:
    y = x @ sd[f"{name}.weight"].t()
    b = sd.get(f"{name}.bias")
    return y if b is None else y + b


def _attn_ref(q_in: torch.Tensor, kv_in: torch.Tensor, sd: dict, name: str, heads: int) -> torch.Tensor:
    B, Nq, C = q_in.shape
    Nk = kv_in.shape[1]
    hd = C // heads
    q = _lin(q_in, sd, f"{name}.q_proj").reshape(B, Nq, heads, hd).permute(0, 2, 1, 3)  # (B, nh, Nq, hd)
    k = _lin(kv_in, sd, f"{name}.k_proj").reshape(B, Nk, heads, hd).permute(0, 2, 1, 3)  # (B, nh, Nk, hd)
    v = _lin(kv_in, sd, f"{name}.v_proj").reshape(B, Nk, heads, hd).permute(0, 2, 1, 3)  # (B, nh, Nk, hd)
    a = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(hd), dim=-1)  # (B, nh, Nq, Nk)
    x = (a @ v).permute(0, 2, 1, 3).reshape(B, Nq, C)
    return _lin(x, sd, f"{name}.proj")


def _layer_ref(x: torch.Tensor, mem: torch.Tensor, sd: dict, name: str, heads: int) -> torch.Tensor:
    h = _ln(x, sd, f"{name}.norm1")
    x = x + _attn_ref(h, h, sd, f"{name}.self_attn", heads)
    x = x + _attn_ref(_ln(x, sd, f"{name}.norm2"), mem, sd, f"{name}.cross_attn", heads)
    h = F.gelu(_lin(_ln(x, sd, f"{name}.norm3"), sd, f"{name}.mlp.0"))
    return x + _lin(h, sd, f"{name}.mlp.3")


def coattention_reference(
    sd: dict[str, torch.Tensor], g: torch.Tensor, dense: torch.Tensor, T: torch.Tensor, *, heads: int, layers: int
) -> torch.Tensor:
    """Score map S (B, K, h, w) from a ``CoAttentionMatching`` state dict; g (B, E), dense (B, E, h, w), T (K, E)."""
    B, E, h, w = dense.shape
    V = torch.cat([g[:, None], dense.reshape(B, E, h * w).permute(0, 2, 1)], dim=1)  # (B, 1 + h·w, E)
    Tb = T[None].expand(B, -1, -1)  # (B, K, E)
    mem = _ln(_lin(_ln(V, sd, "memory_proj.0"), sd, "memory_proj.1"), sd, "memory_proj.2")
    txt = _lin(_ln(Tb, sd, "text_proj.0"), sd, "text_proj.1")
    t, v = txt, mem
    for i in range(layers):
        t = _layer_ref(t, mem, sd, f"text_decoder.{i}", heads)
    for i in range(layers):
        v = _layer_ref(v, txt, sd, f"visual_decoder.{i}", heads)
    T_star = Tb + sd["gamma"] * _lin(_ln(t, sd, "text_out.0"), sd, "text_out.1")
    V_star = V + sd["beta"] * _lin(_ln(v, sd, "visual_out.0"), sd, "visual_out.1")
    f = V_star[:, 1:] / V_star[:, 1:].norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (B, h·w, E)
    t = T_star / T_star.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # (B, K, E)
    return (t @ f.transpose(1, 2)).reshape(B, -1, h, w)  # (B, K, h, w)
