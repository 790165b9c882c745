"""A vectorised MNIST-1D generator (Greydanus 2020, github.com/greydanus/mnist1d).

The reference implementation transforms one sample at a time with scipy; this
one applies the same transformation to a whole block of samples with numpy:
pad the 12-point digit template with 36–60 zeros, stretch it to 72 points,
scale, roll, fill the zeros with smoothed noise, add iid noise, shear, and
resample to 40 points. `tests/data/test_mnist1d.py` checks that it matches the
`mnist1d` package statistically.

Samples are generated in blocks of BLOCK (balanced classes, shuffled within the
block), each seeded by (seed, stream, block number). Sample i of a stream is
therefore the same whatever the number of samples asked for, so the train pool
is a prefix of the train stream and the samples for κ > 1 are the ones after
it; the test set is a separate stream.
"""

from __future__ import annotations

import numpy as np

GENERATOR_VERSION = "kdcli-mnist1d-1"
BLOCK = 1000
NUM_CLASSES = 10
TEMPLATE_LEN = 12
PADDING = (36, 60)
SCALE_COEFF = 0.4
MAX_TRANSLATION = 48
CORR_NOISE_SCALE = 0.25
IID_NOISE_SCALE = 2e-2
SHEAR_SCALE = 0.75
FINAL_LEN = 40
WIDTH = TEMPLATE_LEN + PADDING[1]  # points before the final resampling
STREAMS = {"train": 0, "test": 1}
# The distribution's knobs, as `mnist1d` dataset arguments (a shifted distribution: noisier,
# wider translations, ...); the defaults are the reference's constants above.
SHIFTS = {"corr_noise": CORR_NOISE_SCALE, "iid_noise": IID_NOISE_SCALE, "max_translation": MAX_TRANSLATION,
          "scale_coeff": SCALE_COEFF, "shear": SHEAR_SCALE}

# The reference standardises each generated dataset by its own mean and std, which
# would make sample i depend on how many samples were drawn. We standardise with
# the stream-independent moments of the generator's output, measured once on
# 10^6 samples (seed 0); the test checks the result has mean ~0 and std ~1.
RAW_MEAN = -0.00608
RAW_STD = 0.15467


def templates() -> np.ndarray:
    """The ten 12-point digit templates of the reference, normalised as it does."""
    x = np.asarray([
        [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
        [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
        [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
        [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
        [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
        [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
        [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
        [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
        [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
    ])
    x -= x.mean(1, keepdims=True)
    x /= x.std(1, keepdims=True)
    x -= x[:, :1]
    return x / 6.0


def _resample(x: np.ndarray, lengths: np.ndarray, n_out: int) -> np.ndarray:
    """Linear interpolation of each row's first `lengths[i]` points onto n_out points."""
    pos = np.linspace(0.0, 1.0, n_out)[None, :] * (lengths[:, None] - 1)
    lo = np.clip(np.floor(pos).astype(np.int64), 0, lengths[:, None] - 2)
    frac = pos - lo
    rows = np.arange(len(x))[:, None]
    return x[rows, lo] * (1 - frac) + x[rows, lo + 1] * frac


def _gaussian_filter_sigma2(x: np.ndarray) -> np.ndarray:
    """scipy.ndimage.gaussian_filter(x, 2) along the last axis (mode 'reflect', truncate 4)."""
    radius = 8
    t = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (t / 2.0) ** 2)
    kernel /= kernel.sum()
    padded = np.concatenate([x[:, radius - 1::-1], x, x[:, :-radius - 1:-1]], axis=1)
    windows = np.lib.stride_tricks.sliding_window_view(padded, 2 * radius + 1, axis=1)
    return windows @ kernel


def generate_block(seed: int, stream: str, block: int, **shifts) -> tuple[np.ndarray, np.ndarray]:
    """BLOCK standardised samples [BLOCK, 40] float32 and labels [BLOCK] int64; `shifts` override
    SHIFTS (the random draws stay the same, only their scales change). Samples of a shifted
    distribution are standardised with the default one's moments, so the shift is not undone."""
    s = {**SHIFTS, **shifts}
    rng = np.random.default_rng([seed, STREAMS[stream], block])
    n = BLOCK
    y = np.repeat(np.arange(NUM_CLASSES), n // NUM_CLASSES)
    width = WIDTH

    # pad: template + eps followed by p zeros, p uniform in [36, 60]
    pad = PADDING[0] + (rng.random(n) * (PADDING[1] - PADDING[0] + 1)).astype(np.int64)
    x = np.zeros((n, width))
    x[:, :TEMPLATE_LEN] = templates()[y] + 1e-8
    x = _resample(x, TEMPLATE_LEN + pad, width)  # dilate to 72 points
    x *= 1 + s["scale_coeff"] * (rng.random(n)[:, None] - 0.5)
    shift = rng.integers(0, s["max_translation"], n)
    x = x[np.arange(n)[:, None], (np.arange(width)[None, :] - shift[:, None]) % width]

    corr = _gaussian_filter_sigma2(s["corr_noise"] * rng.standard_normal((n, width)))
    x = np.where(x != 0, x, corr)
    x = x + s["iid_noise"] * rng.standard_normal((n, width))
    coeff = s["shear"] * (rng.random(n)[:, None] - 0.5)
    x = x - coeff * np.linspace(-0.5, 0.5, width)[None, :]
    x = _resample(x, np.full(n, width), FINAL_LEN)

    order = rng.permutation(n)
    x = (x[order] - RAW_MEAN) / RAW_STD
    return x.astype(np.float32), y[order].astype(np.int64)


def generate(seed: int, stream: str, start: int, stop: int, **shifts) -> tuple[np.ndarray, np.ndarray]:
    """Samples start..stop-1 of a stream (of the distribution `shifts` sets, generate_block)."""
    if stop <= start:
        return np.empty((0, FINAL_LEN), np.float32), np.empty(0, np.int64)
    first, last = start // BLOCK, (stop - 1) // BLOCK
    blocks = [generate_block(seed, stream, b, **shifts) for b in range(first, last + 1)]
    x = np.concatenate([b[0] for b in blocks])
    y = np.concatenate([b[1] for b in blocks])
    offset = first * BLOCK
    return x[start - offset:stop - offset], y[start - offset:stop - offset]
