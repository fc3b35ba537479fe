"""WeakCLIP training losses (SPEC §2): balanced seed and CRF boundary losses at stride 8, auxiliary score-map loss."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from weakclip.model.crf import BOUNDARY_LOSS_CRF, CRFParams, dense_crf

IGNORE_INDEX = 255


def smooth_softmax(logits: torch.Tensor, dim: int = 1, eps: float = 1e-7) -> torch.Tensor:
    """P = softmax(z) smoothed: (P + eps) / Σ(P + eps) along ``dim`` (keeps log P finite)."""
    p = torch.softmax(logits, dim=dim) + eps
    return p / p.sum(dim=dim, keepdim=True)


def balanced_seed_loss(probs: torch.Tensor, seeds: torch.Tensor, ignore_index: int = IGNORE_INDEX) -> torch.Tensor:
    """mean_b(bg) + mean_b(fg), bg = -Σ_{seed=0} log P₀ / max(n_bg, 1e-4), fg likewise over all foreground seeds;
    probs (B, K, H/8, W/8), seeds (B, H/8, W/8) int64: 0 background, 1..K-1 foreground, 255 ignored."""
    B = probs.shape[0]
    log_p = probs.clamp_min(torch.finfo(probs.dtype).tiny).log()  # (B, K, H/8, W/8)
    bg = seeds == 0  # (B, H/8, W/8)
    fg = (seeds > 0) & (seeds != ignore_index)
    target = torch.where(fg, seeds, torch.zeros_like(seeds))
    log_py = log_p.gather(1, target.unsqueeze(1)).squeeze(1)  # (B, H/8, W/8): log P at the seed class
    bg_f, fg_f = bg.to(log_p.dtype), fg.to(log_p.dtype)
    bg_term = -(log_py * bg_f).flatten(1).sum(1) / bg_f.flatten(1).sum(1).clamp_min(1e-4)  # (B,)
    fg_term = -(log_py * fg_f).flatten(1).sum(1) / fg_f.flatten(1).sum(1).clamp_min(1e-4)  # (B,)
    return bg_term.sum() / B + fg_term.sum() / B


def clipped_kl(q: torch.Tensor, probs: torch.Tensor, ratio_min: float = 0.05, ratio_max: float = 20.0) -> torch.Tensor:
    """Mean over pixels of Σ_k Q_k · log(clip(Q_k / P_k)); no gradient through q (B, K, H/8, W/8) or clipped ratios."""
    ratio = (q.detach() / probs).clamp(ratio_min, ratio_max)
    return (q.detach() * ratio.log()).sum(1).mean()


def denormalize_to_uint8(
    images: torch.Tensor, mean: Sequence[float], std: Sequence[float], size_hw: tuple[int, int] | None = None
) -> np.ndarray:
    """(B, 3, H, W) normalised → (B, h, w, 3) uint8 RGB, bilinearly resized (align_corners False) to ``size_hw``."""
    m, s = (torch.as_tensor(v, dtype=torch.float32, device=images.device).view(1, 3, 1, 1) for v in (mean, std))
    x = images.detach().float() * s + m  # (B, 3, H, W) in 0-255
    if size_hw is not None and tuple(x.shape[-2:]) != tuple(size_hw):
        x = F.interpolate(x, size=tuple(size_hw), mode="bilinear", align_corners=False)
    return x.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def crf_targets(
    probs: torch.Tensor, images_uint8: np.ndarray, params: CRFParams = BOUNDARY_LOSS_CRF, min_prob: float = 1e-4
) -> torch.Tensor:
    """Q (B, K, H/8, W/8) = dense CRF of P on the CPU, detached, clamped ≥ ``min_prob`` and renormalised."""
    p = probs.detach().float().cpu().numpy()
    q = np.stack([dense_crf(images_uint8[b], p[b], min_prob=min_prob, **params.as_kwargs()) for b in range(len(p))])
    q_t = torch.from_numpy(q).to(device=probs.device, dtype=probs.dtype).clamp_min(min_prob)
    return q_t / q_t.sum(1, keepdim=True)


def boundary_loss(
    probs: torch.Tensor,
    images: torch.Tensor,
    mean: Sequence[float],
    std: Sequence[float],
    params: CRFParams = BOUNDARY_LOSS_CRF,
) -> torch.Tensor:
    """Clipped KL(Q ‖ P), Q the dense CRF of P on the de-normalised image downscaled to H/8 × W/8."""
    imgs = denormalize_to_uint8(images, mean, std, (probs.shape[-2], probs.shape[-1]))
    return clipped_kl(crf_targets(probs, imgs, params), probs)


def aux_score_loss(
    score_map: torch.Tensor, seeds: torch.Tensor, tau: float = 0.07, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """CE of S / tau resized bilinearly to the seeds (B, H, W), averaged over **all** pixels (ignored count as 0),
    the official mmseg-0.x behaviour."""
    logits = F.interpolate(score_map.float() / tau, size=seeds.shape[-2:], mode="bilinear", align_corners=False)
    return F.cross_entropy(logits, seeds, ignore_index=ignore_index, reduction="none").mean()  # mean over (B, H, W)


class WeakCLIPLoss(nn.Module):
    """Total loss L = w_seed · L_seed + w_bd · L_bd + w_aux · L_aux; a zero weight skips its term entirely."""

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        seed_weight: float = 1.0,
        boundary_weight: float = 1.0,
        aux_weight: float = 0.4,
        loss_size_divisor: int = 8,
        crf_params: CRFParams = BOUNDARY_LOSS_CRF,
        tau: float = 0.07,
    ) -> None:
        super().__init__()
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.seed_weight, self.boundary_weight, self.aux_weight = seed_weight, boundary_weight, aux_weight
        self.loss_size_divisor, self.crf_params, self.tau = loss_size_divisor, crf_params, tau

    def forward(
        self, logits: torch.Tensor, score_map: torch.Tensor, seeds: torch.Tensor, images: torch.Tensor
    ) -> dict[str, torch.Tensor]:
        """logits (B, K, H/4, W/4), score_map (B, K, h, w), seeds (B, H, W) int64, images (B, 3, H, W) → weighted
        ``loss`` (with gradient) and the unweighted terms ``seed``, ``boundary``, ``aux`` (detached; 0 if skipped)."""
        size = (seeds.shape[-2] // self.loss_size_divisor, seeds.shape[-1] // self.loss_size_divisor)  # (H/8, W/8)
        zero = logits.new_zeros((), dtype=torch.float32)
        out = {"seed": zero, "boundary": zero, "aux": zero}
        if self.seed_weight or self.boundary_weight:
            z = F.interpolate(logits.float(), size=size, mode="bilinear", align_corners=False)  # (B, K, H/8, W/8)
            probs = smooth_softmax(z)
            if self.seed_weight:
                y = F.interpolate(seeds[:, None].float(), size=size, mode="nearest")[:, 0].long()  # (B, H/8, W/8)
                out["seed"] = balanced_seed_loss(probs, y)
            if self.boundary_weight:
                out["boundary"] = boundary_loss(probs, images, self.mean, self.std, self.crf_params)
        if self.aux_weight:
            out["aux"] = aux_score_loss(score_map, seeds, self.tau)
        weights = {"seed": self.seed_weight, "boundary": self.boundary_weight, "aux": self.aux_weight}
        total = sum((w * out[k] for k, w in weights.items() if w), zero)
        return {**{k: v.detach() for k, v in out.items()}, "loss": total}
