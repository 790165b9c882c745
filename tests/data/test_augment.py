"""Batch augmentation: horizontal flip and random crop with zero padding, checked with numpy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcli.data.augment import augment


def _images(n=64, c=3, h=8, w=10, seed=0):
    # non-square, so a transposition would not pass for a flip
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, c, h, w), dtype=np.uint8))


def _crops(image, p):
    """Every crop of an independently zero-padded CHW image, keyed by offset (dy, dx)."""
    c, h, w = image.shape
    padded = np.zeros((c, h + 2 * p, w + 2 * p), dtype=image.dtype)
    padded[:, p:p + h, p:p + w] = image
    return {(dy, dx): padded[:, dy:dy + h, dx:dx + w] for dy in range(2 * p + 1) for dx in range(2 * p + 1)}


def _offsets(out, x, p):
    """The offset each output sample was cropped at (asserting there is one)."""
    found = []
    for i in range(len(x)):
        matches = [k for k, crop in _crops(x[i], p).items() if np.array_equal(out[i], crop)]
        assert matches, f"sample {i} is not a crop of its padded image"
        found.append(matches[0])
    return found


def test_flip_only():
    x = _images()
    out = augment(x, torch.Generator().manual_seed(0), crop_padding=0, flip=True)
    xn, on = x.numpy(), out.numpy()
    flipped = [np.array_equal(on[i], xn[i, :, :, ::-1]) for i in range(len(x))]
    kept = [np.array_equal(on[i], xn[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 10 < sum(flipped) < 54 and 10 < sum(kept) < 54  # both happen, about half each


def test_no_augmentation_is_identity():
    x = _images(8)
    assert torch.equal(augment(x, torch.Generator().manual_seed(0), crop_padding=0, flip=False), x)


@pytest.mark.parametrize("p", [1, 2, 4])
def test_crop_only(p):
    x = _images(n=300, seed=p)
    out = augment(x, torch.Generator().manual_seed(1), crop_padding=p, flip=False)
    assert out.shape == x.shape and out.dtype == torch.uint8
    offsets = _offsets(out.numpy(), x.numpy(), p)
    assert {dy for dy, _ in offsets} == set(range(2 * p + 1))  # every offset in [0, 2p] is used
    assert {dx for _, dx in offsets} == set(range(2 * p + 1))


def test_flip_then_crop():
    p = 2
    x = _images(n=100)
    out = augment(x, torch.Generator().manual_seed(2), crop_padding=p, flip=True).numpy()
    xn = x.numpy()
    n_flipped = 0
    for i in range(len(x)):
        plain = any(np.array_equal(out[i], c) for c in _crops(xn[i], p).values())
        mirrored = any(np.array_equal(out[i], c) for c in _crops(xn[i, :, :, ::-1], p).values())
        assert plain or mirrored, i
        n_flipped += mirrored and not plain
    assert 20 < n_flipped < 80


def test_seeded_and_input_untouched():
    x = _images()
    before = x.clone()
    a = augment(x, torch.Generator().manual_seed(5))
    b = augment(x, torch.Generator().manual_seed(5))
    c = augment(x, torch.Generator().manual_seed(6))
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(x, before)
    assert a.dtype == torch.uint8 and a.shape == x.shape
