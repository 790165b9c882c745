"""A small ViT-style student (Dosovitskiy et al. 2021) for 1-D signals and images.

The input is cut into non-overlapping patches (`patch` points of a [C, L] signal, or
`patch`×`patch` pixels of a [C, H, W] image), each linearly embedded, plus a learned
position embedding; pre-norm bidirectional transformer blocks (kdcli/models/gpt.py's Block
with causal=False); a final LayerNorm and the mean over patches give the penultimate
representation (`features`), and a linear `head` the logits. Mean pooling instead of a class
token: on a few thousand samples it trains as well and has one parameter vector fewer.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from kdcli.models.gpt import Block
from kdcli.models.registry import register_model
from kdcli.models.zoo import Classifier


class PatchEncoder(nn.Module):
    """[B, C, L] or [B, C, H, W] -> pooled patch representation [B, dim]."""

    def __init__(self, input_shape, patch: int, dim: int, depth: int, heads: int, dropout: float):
        super().__init__()
        in_ch, *space = input_shape
        if len(space) not in (1, 2):
            raise ValueError(f"vit takes [C, L] signals or [C, H, W] images, not inputs of shape {list(input_shape)}")
        if any(s % patch for s in space):
            raise ValueError(f"patch={patch} must divide the input's length/sides {space}")
        if dim % heads:
            raise ValueError(f"dim={dim} must be a multiple of heads={heads}")
        conv = nn.Conv1d if len(space) == 1 else nn.Conv2d
        self.embed = conv(in_ch, dim, patch, stride=patch)  # one linear map per patch
        self.pos = nn.Parameter(torch.zeros(1, math.prod(s // patch for s in space), dim))
        nn.init.normal_(self.pos, std=0.02)
        self.blocks = nn.Sequential(*(Block(dim, heads, dropout, causal=False) for _ in range(depth)))
        self.norm = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.embed(x).flatten(2).transpose(1, 2) + self.pos  # [B, patches, dim]
        return self.norm(self.blocks(tokens)).mean(dim=1)


@register_model("vit")
def vit(num_classes: int, input_shape, patch: int = 4, dim: int = 64, depth: int = 4, heads: int = 4,
        dropout: float = 0.0) -> nn.Module:
    """ViT-style classifier over patches: MNIST-1D [1, 40] makes 10 patches of 4 points,
    CIFAR-10 [3, 32, 32] 64 patches of 4×4 pixels."""
    return Classifier(PatchEncoder(input_shape, patch, dim, depth, heads, dropout), nn.Linear(dim, num_classes))


@register_model("test_vit")
def test_vit(num_classes: int, input_shape) -> nn.Module:
    return vit(num_classes, input_shape, patch=4, dim=8, depth=1, heads=2)
