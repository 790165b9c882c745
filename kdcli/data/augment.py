"""Train-time image augmentation on whole batches: random crop with padding, horizontal flip.

Works on uint8 NCHW tensors before normalisation (padding is black, as
torchvision's RandomCrop(padding=p) on PIL images), drawing from an explicit
generator so paired runs see the same augmented views.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def augment(x: torch.Tensor, generator: torch.Generator, *, crop_padding: int = 4,
            flip: bool = True) -> torch.Tensor:
    n, c, h, w = x.shape
    if flip:
        mirror = (torch.rand(n, generator=generator) < 0.5).to(x.device)
        x = torch.where(mirror[:, None, None, None], x.flip(3), x)
    if crop_padding > 0:
        p = crop_padding
        padded = F.pad(x, (p, p, p, p))
        dy, dx = torch.randint(0, 2 * p + 1, (2, n), generator=generator).to(x.device)
        rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
        cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
        batch = torch.arange(n, device=x.device)[:, None, None, None]
        chans = torch.arange(c, device=x.device)[None, :, None, None]
        x = padded[batch, chans, rows, cols]
    return x
