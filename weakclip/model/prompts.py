"""Learnable prompt: 8 shared context vectors spliced after [SOT] of every bare class name."""

from __future__ import annotations

import functools

import torch
from open_clip.tokenizer import SimpleTokenizer
from torch import nn

_tokenizer = functools.cache(SimpleTokenizer)  # one tokenizer per process (reading its BPE table takes a while)


def tokenize_names(class_names: tuple[str, ...] | list[str], context_length: int = 5) -> torch.Tensor:
    """Bare class names as ``[SOT] name [EOT] pad…`` → (K, context_length) int64; a name longer than
    ``context_length - 2`` BPE tokens is a ValueError naming it."""
    tok = _tokenizer()
    sot, eot = tok.encoder["<start_of_text>"], tok.encoder["<end_of_text>"]
    out = torch.zeros(len(class_names), context_length, dtype=torch.long)
    for i, name in enumerate(class_names):
        bpe = tok.encode(name)
        if len(bpe) > context_length - 2:
            raise ValueError(
                f"class name {name!r} needs {len(bpe)} BPE tokens; at most {context_length - 2} fit in the "
                f"name context length {context_length} (use a shorter synonym)"
            )
        out[i, : len(bpe) + 2] = torch.tensor([sot, *bpe, eot])
    return out


class PromptLearner(nn.Module):
    """Text-tower input for K classes, [SOT] ctx₁…ctx_M name [EOT] pad: forward(token_embedding) → (prompts
    (K, 5 + M, W), eot_index (K,))."""

    name_tokens: torch.Tensor  # (K, name_context_length) buffer

    def __init__(self, class_names: tuple[str, ...], n_contexts: int, width: int, name_context_length: int = 5):
        super().__init__()
        self.register_buffer("name_tokens", tokenize_names(class_names, name_context_length), persistent=False)
        self.contexts = nn.Parameter(torch.empty(1, n_contexts, width))  # (1, M, W), shared by all classes
        nn.init.trunc_normal_(self.contexts, std=1.0, a=-2.0, b=2.0)

    def forward(self, token_embedding: nn.Embedding) -> tuple[torch.Tensor, torch.Tensor]:
        names = token_embedding(self.name_tokens)  # (K, 5, W)
        ctx = self.contexts.to(names.dtype).expand(names.shape[0], -1, -1)  # (K, M, W)
        prompts = torch.cat([names[:, :1], ctx, names[:, 1:]], dim=1)  # (K, 5 + M, W)
        eot_index = self.name_tokens.argmax(dim=-1) + self.contexts.shape[1]  # EOT has the largest id
        return prompts, eot_index
