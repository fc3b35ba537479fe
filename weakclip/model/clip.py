"""CLIP towers over open_clip (frozen in WeakCLIP): image taps + dense embeddings, and the text tower."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.nn.functional as F
from open_clip.model import CLIPTextCfg, CLIPVisionCfg, _build_text_tower, _build_vision_tower
from torch import nn

from weakclip.errors import WeightsUnavailable
from weakclip.model.config import WeakCLIPConfig
from weakclip.model.torchscript_weights import is_torchscript_archive, read_torchscript_state_dict


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth per sample: zero the residual branch of a whole sample with probability p."""
    if p == 0.0 or not training:
        return x
    keep = 1.0 - p
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


def resize_pos_embed(pos: torch.Tensor, grid: int, size: tuple[int, int]) -> torch.Tensor:
    """Resize a ViT positional table (1 + grid², D) to (1 + h·w, D), bilinear; always interpolates (identity at the
    same size) so exported graphs keep H, W dynamic."""
    cls_pos, patch_pos = pos[:1], pos[1:]
    D = pos.shape[-1]
    patch_pos = patch_pos.reshape(1, grid, grid, D).permute(0, 3, 1, 2)  # (1, D, grid, grid)
    patch_pos = F.interpolate(patch_pos, size=size, mode="bilinear", align_corners=False)
    patch_pos = patch_pos.flatten(2).transpose(1, 2)[0]  # (h·w, D)
    return torch.cat([cls_pos, patch_pos], dim=0)


class CLIPImageEncoder(nn.Module):
    """open_clip ViT: images (B, 3, H, W), H and W multiples of the patch → (4 adapter taps (B, D, h, w), g (B, E),
    dense F (B, E, h, w)) with h, w = H, W / patch."""

    def __init__(self, cfg: WeakCLIPConfig):
        super().__init__()
        vision_cfg = CLIPVisionCfg(
            layers=cfg.vision_layers,
            width=cfg.vision_width,
            head_width=cfg.vision_width // cfg.vision_heads,
            patch_size=cfg.patch_size,
            image_size=cfg.crop_size,
        )
        self.visual = _build_vision_tower(cfg.embed_dim, vision_cfg, quick_gelu=True)
        self.grid = cfg.crop_size // cfg.patch_size  # side of the stored positional grid
        self.tap_layers = tuple(cfg.tap_layers)
        self.double_cls_embedding = cfg.double_cls_embedding
        n = cfg.vision_layers
        self.drop_path_rates = [cfg.drop_path_rate * i / max(n - 1, 1) for i in range(n)]  # linear over blocks

    def forward(self, images: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor]:
        v = self.visual
        x = v.conv1(images)  # (B, D, h, w)
        B, D, h, w = x.shape
        x = x.flatten(2).transpose(1, 2)  # (B, h·w, D)
        cls_tok = v.class_embedding.to(x.dtype).reshape(1, 1, D).expand(B, 1, D)
        pos = resize_pos_embed(v.positional_embedding.to(x.dtype), self.grid, (h, w))  # (1 + h·w, D)
        if self.double_cls_embedding:  # official quirk: class_embedding added a second time through the position
            pos = torch.cat([pos[:1] + v.class_embedding.to(x.dtype), pos[1:]], dim=0)
        x = torch.cat([cls_tok, x], dim=1) + pos  # (B, 1 + h·w, D)
        x = v.ln_pre(x)
        taps = []
        for i, blk in enumerate(v.transformer.resblocks):
            p = self.drop_path_rates[i]
            x = x + drop_path(blk.ls_1(blk.attention(blk.ln_1(x))), p, self.training)
            x = x + drop_path(blk.ls_2(blk.mlp(blk.ln_2(x))), p, self.training)
            if i + 1 in self.tap_layers:
                taps.append(x[:, 1:].transpose(1, 2).reshape(B, D, h, w))  # patch tokens (B, D, h, w)
        x = v.ln_post(x) @ v.proj  # (B, 1 + h·w, E)
        g = x[:, 0]  # (B, E)
        dense = x[:, 1:].transpose(1, 2).reshape(B, -1, h, w)  # (B, E, h, w)
        return taps, g, dense


class CLIPTextEncoder(nn.Module):
    """open_clip text transformer with an L×L causal mask: prompts (K, L, W), eot_index (K,) → T (K, E), the token at
    eot_index through ln_final and text_projection."""

    def __init__(self, cfg: WeakCLIPConfig):
        super().__init__()
        text_cfg = CLIPTextCfg(
            context_length=cfg.text_length,
            vocab_size=cfg.vocab_size,
            width=cfg.text_width,
            heads=cfg.text_heads,
            layers=cfg.text_layers,
        )
        self.tower = _build_text_tower(cfg.embed_dim, text_cfg, quick_gelu=True)

    @property
    def token_embedding(self) -> nn.Embedding:
        return self.tower.token_embedding

    def forward(self, prompts: torch.Tensor, eot_index: torch.Tensor) -> torch.Tensor:
        t = self.tower
        L = prompts.shape[1]
        x = prompts + t.positional_embedding[:L].to(prompts.dtype)  # (K, L, W)
        mask = torch.full((L, L), float("-inf"), device=x.device, dtype=x.dtype).triu_(1)
        x = t.transformer(x, attn_mask=mask)
        x = t.ln_final(x)
        x = x[torch.arange(x.shape[0], device=x.device), eot_index]  # (K, W)
        return t.text_projection(x) if isinstance(t.text_projection, nn.Linear) else x @ t.text_projection  # (K, E)


# Pretrained CLIP weights


class WeightsUnavailableError(WeightsUnavailable, RuntimeError):
    """Pretrained CLIP weights cannot be obtained (offline without a cache) or read: one ``error:`` line."""


def _load_state_dict_file(path: str) -> dict[str, torch.Tensor]:
    """CLIP weights from a TorchScript archive (read as data, never run; float32), .safetensors or tensor state dict."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"{path}: CLIP weights file not found")
    if p.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(p))
    if is_torchscript_archive(p):
        sd = read_torchscript_state_dict(p)
        return {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    try:
        sd = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - report any unpickling refusal as one clear line
        raise ValueError(
            f"{path}: not a tensor-only state dict (refusing to unpickle arbitrary objects): {e}"
        ) from None
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    return sd


def openai_weights_path(model_name: str) -> str:
    """Path of OpenAI's CLIP weights for ``model_name`` via open_clip's download cache, or a clear error."""
    import open_clip

    try:
        return open_clip.pretrained.download_pretrained(open_clip.get_pretrained_cfg(model_name, "openai"))
    except Exception as e:  # noqa: BLE001
        raise WeightsUnavailableError(
            f"could not obtain OpenAI CLIP weights for {model_name} ({type(e).__name__}: {str(e).splitlines()[0]}); "
            f"download ViT-B-16.pt once and pass clip_weights='/path/to/ViT-B-16.pt' (or a .safetensors state dict)"
        ) from None


_TEXT_TOWER_KEYS = {"transformer", "token_embedding", "ln_final", "positional_embedding", "text_projection"}


def load_clip_weights(
    image_encoder: CLIPImageEncoder, text_encoder: CLIPTextEncoder, weights: str, model_name: str = "ViT-B-16"
) -> None:
    """Load OpenAI-layout CLIP weights into both towers, the positional grid resized to the crop's and the text
    positional table cut to the prompt length; missing tower keys are an error that lists them."""
    path = openai_weights_path(model_name) if weights == "openai" else weights
    sd = _load_state_dict_file(os.fspath(path))
    vis = {k.removeprefix("visual."): v for k, v in sd.items() if k.startswith("visual.")}
    txt = {k: v for k, v in sd.items() if k.split(".")[0] in _TEXT_TOWER_KEYS}
    pos = vis.get("positional_embedding")
    if pos is not None and pos.shape[0] != image_encoder.visual.positional_embedding.shape[0]:
        grid, g = int(round((pos.shape[0] - 1) ** 0.5)), image_encoder.grid
        vis["positional_embedding"] = resize_pos_embed(pos.float(), grid, (g, g))
    if "positional_embedding" in txt:
        txt["positional_embedding"] = txt["positional_embedding"][: text_encoder.tower.positional_embedding.shape[0]]
    for name, module, part in (("visual", image_encoder.visual, vis), ("text", text_encoder.tower, txt)):
        missing, unexpected = module.load_state_dict(part, strict=False)
        missing = [m for m in missing if not m.endswith("attn_mask")]
        if missing or unexpected:
            raise ValueError(
                f"{path}: CLIP {name} tower weights do not match the config: missing {missing[:8]}"
                f"{'…' if len(missing) > 8 else ''}, unexpected {unexpected[:8]}"
            )
