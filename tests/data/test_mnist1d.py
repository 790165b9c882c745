"""The vectorised MNIST-1D generator, its cache, and the `mnist1d` dataset.

Every expected value comes from an independent reference: the `mnist1d`
package (Greydanus's per-sample scipy implementation), scipy, np.interp, or
plain float64 numpy written here.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from kdcli.data import build_dataset
from kdcli.data import mnist1d_gen as gen

# ---------------------------------------------------------------- the generator


@pytest.fixture(scope="module")
def reference_5k():
    """5,000 samples (500 per class) from the reference `mnist1d` package, seed 0."""
    data = pytest.importorskip("mnist1d.data")
    args = data.get_dataset_args()
    args.num_samples = 5000
    args.seed = 0
    d = data.make_dataset(args)
    x = np.concatenate([d["x"], d["x_test"]]).astype(np.float64)
    y = np.concatenate([d["y"], d["y_test"]])
    return x, y


def test_generator_matches_reference_package_statistically(reference_5k):
    rx, ry = reference_5k
    kx, ky = gen.generate(50, "train", 0, 5000)
    kx = kx.astype(np.float64)
    assert kx.shape == rx.shape == (5000, 40)
    assert np.array_equal(np.bincount(ky, minlength=10), np.full(10, 500))
    assert np.array_equal(np.bincount(ry, minlength=10), np.full(10, 500))

    def var_se2(u):
        # squared standard error of the sample variance: (m4 - m2²) / n
        d = u - u.mean(0)
        return ((d**4).mean(0) - (d**2).mean(0) ** 2) / len(u)

    for c in range(10):
        a, b = rx[ry == c], kx[ky == c]
        z_mean = (a.mean(0) - b.mean(0)) / np.sqrt(a.var(0, ddof=1) / len(a) + b.var(0, ddof=1) / len(b))
        z_var = (a.var(0, ddof=1) - b.var(0, ddof=1)) / np.sqrt(var_se2(a) + var_se2(b))
        ratio = b.std(0, ddof=1) / a.std(0, ddof=1)
        # Calibrated against generator-vs-generator runs with different seeds, where
        # max |z| over the 40 positions x 10 classes stays below ~3.7 and the worst
        # per-cell std ratio reaches ~0.24 (500 samples per cell, heavy tails).
        assert np.abs(z_mean).max() < 4.5, (c, np.abs(z_mean).argmax(), np.abs(z_mean).max())
        assert np.abs(z_var).max() < 4.5, (c, np.abs(z_var).argmax(), np.abs(z_var).max())
        assert np.abs(ratio - 1).max() < 0.3, (c, ratio)
    # Pooled over classes (5,000 per position) the std ratio is much tighter: the
    # null stays below ~0.05, while e.g. corr-noise 0.30 or shear 0.9 give ~0.12-0.15.
    pooled = kx.std(0) / rx.std(0)
    assert np.abs(pooled - 1).max() < 0.08, pooled


@pytest.mark.parametrize("width", [8, 9, 40, 72])
def test_gaussian_filter_matches_scipy(width):
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(width).standard_normal((25, width))
    expected = np.stack([ndimage.gaussian_filter1d(row, 2, mode="reflect") for row in x])
    np.testing.assert_allclose(gen._gaussian_filter_sigma2(x), expected, rtol=0, atol=1e-12)


def test_gaussian_filter_matches_reference_call():
    """The reference smooths with scipy.ndimage.gaussian_filter(noise, 2) on 1-D rows."""
    ndimage = pytest.importorskip("scipy.ndimage")
    x = np.random.default_rng(1).standard_normal((10, 72))
    expected = np.stack([ndimage.gaussian_filter(row, 2) for row in x])
    np.testing.assert_allclose(gen._gaussian_filter_sigma2(x), expected, rtol=0, atol=1e-12)


@pytest.mark.parametrize("n_out", [40, 72, 100])
def test_resample_matches_np_interp(n_out):
    rng = np.random.default_rng(n_out)
    width = 72
    x = rng.standard_normal((30, width))
    lengths = rng.integers(2, width + 1, 30)
    lengths[:3] = [2, width, 48]
    got = gen._resample(x, lengths, n_out)
    for i, length in enumerate(lengths):
        expected = np.interp(np.linspace(0, length - 1, n_out), np.arange(length), x[i, :length])
        np.testing.assert_allclose(got[i], expected, rtol=0, atol=1e-12)


def test_templates_match_reference_package():
    data = pytest.importorskip("mnist1d.data")
    np.testing.assert_allclose(gen.templates(), data.get_templates()["x"], rtol=0, atol=1e-15)


def test_generate_is_deterministic():
    a = gen.generate(3, "train", 0, 1500)
    b = gen.generate(3, "train", 0, 1500)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert a[0].dtype == np.float32 and a[0].shape == (1500, 40)
    assert a[1].dtype == np.int64 and a[1].shape == (1500,)


@pytest.mark.parametrize("start,stop", [(950, 2100), (0, 1), (999, 1001), (1000, 2000), (1999, 2000), (2050, 2999)])
def test_generate_prefix_property_across_blocks(start, stop):
    assert gen.BLOCK == 1000
    full_x, full_y = gen.generate(11, "train", 0, 3000)
    x, y = gen.generate(11, "train", start, stop)
    assert np.array_equal(x, full_x[start:stop])
    assert np.array_equal(y, full_y[start:stop])


def test_streams_and_seeds_differ():
    train_x, _ = gen.generate(5, "train", 0, 1000)
    test_x, _ = gen.generate(5, "test", 0, 1000)
    other_x, _ = gen.generate(6, "train", 0, 1000)
    assert not np.isclose(train_x, test_x).all(axis=1).any()
    assert not np.isclose(train_x, other_x).all(axis=1).any()


def test_labels_balanced_per_block():
    _, y = gen.generate(8, "test", 0, 3000)
    assert np.array_equal(np.bincount(y, minlength=10), np.full(10, 300))
    for b in range(3):
        assert np.array_equal(np.bincount(y[b * 1000:(b + 1) * 1000], minlength=10), np.full(10, 100))


def test_standardised_output_has_zero_mean_unit_std():
    # The generator standardises with constants measured on seed 0; other seeds
    # and the test stream must come out standardised too.
    for seed, stream in ((1, "train"), (2, "test")):
        x, _ = gen.generate(seed, stream, 0, 20000)
        x = x.astype(np.float64)
        assert abs(x.mean()) < 0.03, x.mean()
        assert abs(x.std() - 1) < 0.03, x.std()


# -------------------------------------------------------------------- the cache


def _build(seed=5, n_train=120, n_test=40):
    ds = build_dataset("mnist1d", {"n_train": n_train, "n_test": n_test, "seed": seed})
    return ds.train(), ds.test()


def _assert_splits_equal(a, b):
    for sa, sb in zip(a, b, strict=True):
        assert torch.equal(sa.x, sb.x) and torch.equal(sa.y, sb.y) and torch.equal(sa.index, sb.index)


def test_cache_file_written_and_read_back(tmp_path, monkeypatch):
    monkeypatch.setenv("KDCLI_CACHE_DIR", str(tmp_path))
    first = _build()
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert len(files) == 2 and all(f.endswith(".npz") for f in files), files  # train + test, no temp files
    assert any("train" in f for f in files) and any("test" in f for f in files)

    # A second build must read the files: with the generator disabled it still works.
    def broken(*a, **k):
        raise AssertionError("generator called although the cache holds the arrays")

    monkeypatch.setattr(gen, "generate", broken)
    _assert_splits_equal(_build(), first)


def test_cache_content_is_what_is_served(tmp_path, monkeypatch):
    """A valid file under the cache key is served as is (proves the read path)."""
    monkeypatch.setenv("KDCLI_CACHE_DIR", str(tmp_path))
    train, _ = _build()
    (path,) = [p for p in tmp_path.rglob("*.npz") if "train" in p.name]
    with np.load(path) as f:
        stored = {k: f[k] for k in f.files}
    assert np.array_equal(stored["x"], train.x[:, 0].numpy())
    np.savez(path, x=stored["x"] + 1, y=stored["y"])
    again, _ = _build()
    assert torch.equal(again.x, train.x + 1)


def _corrupt(path, how):
    raw = path.read_bytes()
    if how == "garbage":
        path.write_bytes(b"not an npz file" * 20)
    elif how == "truncated":
        path.write_bytes(raw[: len(raw) // 2])
    elif how == "bitflip":
        data = bytearray(raw)
        data[len(data) // 2] ^= 0xFF  # inside the stored x array (savez does not compress)
        path.write_bytes(bytes(data))
    elif how == "empty":
        path.write_bytes(b"")



@pytest.mark.parametrize("how", [
    "garbage",
    "truncated",
    "bitflip",
    "empty",
])
def test_damaged_cache_entry_is_rebuilt(tmp_path, monkeypatch, how):
    monkeypatch.setenv("KDCLI_CACHE_DIR", str(tmp_path))
    first = _build()
    for path in tmp_path.rglob("*.npz"):
        _corrupt(path, how)
    _assert_splits_equal(_build(), first)
    for path in tmp_path.rglob("*.npz"):  # and the entry is rewritten whole
        with np.load(path, allow_pickle=False) as f:
            assert sorted(f.files) == ["x", "y"]


# ------------------------------------------------------------------ the dataset


def test_mnist1d_dataset_splits():
    ds = build_dataset("mnist1d", {"n_train": 600, "n_test": 300})
    train, test = ds.train(), ds.test()
    assert tuple(train.x.shape) == (600, 1, 40) and tuple(test.x.shape) == (300, 1, 40)
    assert train.x.dtype == test.x.dtype == torch.float32
    assert train.y.dtype == test.y.dtype == train.index.dtype == torch.int64
    assert torch.equal(train.index, torch.arange(600)) and torch.equal(test.index, torch.arange(300))
    assert int(train.y.min()) >= 0 and int(train.y.max()) < ds.num_classes == 10
    assert ds.input_shape == (1, 40) and ds.extensible and not ds.image
    # the splits are the generator's streams (default seed 42)
    gx, gy = gen.generate(42, "train", 0, 600)
    assert np.array_equal(train.x[:, 0].numpy(), gx) and np.array_equal(train.y.numpy(), gy)
    tx, _ = gen.generate(42, "test", 0, 300)
    assert np.array_equal(test.x[:, 0].numpy(), tx)


def test_mnist1d_extra_samples_follow_the_pool():
    ds = build_dataset("mnist1d", {"n_train": 600, "n_test": 100, "seed": 3})
    pool, extra = ds.train(), ds.extra(700)
    assert torch.equal(extra.index, torch.arange(600, 1300))
    assert not set(extra.index.tolist()) & set(pool.index.tolist())
    assert tuple(extra.x.shape) == (700, 1, 40) and extra.y.dtype == torch.int64
    # fresh samples: none equals any pool sample
    dist = torch.cdist(extra.x[:, 0].double(), pool.x[:, 0].double())
    assert float(dist.min()) > 1e-3
    # and exactly the samples a larger pool would hold after the first 600
    bigger = build_dataset("mnist1d", {"n_train": 1300, "n_test": 100, "seed": 3}).train()
    assert torch.equal(bigger.x[:600], pool.x) and torch.equal(bigger.x[600:], extra.x)
    assert torch.equal(bigger.y[600:], extra.y)


def test_mnist1d_extra_zero_samples():
    ds = build_dataset("mnist1d", {"n_train": 1000, "n_test": 100})
    assert len(ds.extra(0)) == 0


def test_fingerprint_stable_and_sensitive(tmp_path, monkeypatch):
    args = {"n_train": 200, "n_test": 50, "seed": 9}
    fp = build_dataset("mnist1d", args).fingerprint
    assert build_dataset("mnist1d", dict(args)).fingerprint == fp  # served from the cache
    monkeypatch.setenv("KDCLI_CACHE_DIR", str(tmp_path))
    assert build_dataset("mnist1d", dict(args)).fingerprint == fp  # freshly generated
    others = [build_dataset("mnist1d", {**args, k: v}).fingerprint
              for k, v in (("seed", 10), ("n_train", 201), ("n_test", 51))]
    assert len({fp, *others}) == 4
    assert len(fp) == 64 and int(fp, 16) >= 0


def test_shift_arguments_change_the_draws_scales_only():
    """A shifted distribution: the reference's values leave the dataset (and its fingerprint)
    as it was; other values change the inputs, never the labels or the random draws' order."""
    from kdcli.data import build_dataset

    base = build_dataset("mnist1d", {"n_train": 200, "n_test": 100})
    same = build_dataset("mnist1d", {"n_train": 200, "n_test": 100, "corr_noise": 0.25, "max_translation": 48})
    assert same.args == base.args and same.fingerprint == base.fingerprint
    noisy = build_dataset("mnist1d", {"n_train": 200, "n_test": 100, "corr_noise": 0.6})
    assert noisy.args["corr_noise"] == 0.6 and noisy.fingerprint != base.fingerprint
    assert torch.equal(noisy.train().y, base.train().y)
    assert not torch.allclose(noisy.train().x, base.train().x)
    # no noise at all: the generator without its noise terms, by hand on one block
    x, _ = gen.generate_block(42, "train", 0, corr_noise=0.0, iid_noise=0.0)
    xn, _ = gen.generate_block(42, "train", 0)
    assert np.abs(x - xn).mean() > 0.05
    # without translation (max_translation=1: a roll by 0) every sample of a class starts alike
    flat, y = gen.generate_block(42, "train", 0, max_translation=1, corr_noise=0.0, iid_noise=0.0,
                                 scale_coeff=0.0, shear=0.0)
    for c in range(10):
        rows = flat[y == c]
        assert np.allclose(rows[:, 0], rows[0, 0], atol=1e-5)


@pytest.mark.parametrize("arg,value", [("max_translation", 0), ("max_translation", 73), ("max_translation", 2.5),
                                       ("corr_noise", -1), ("shear", float("nan")), ("scale_coeff", 2)])
def test_bad_shift_arguments_are_named(arg, value):
    from kdcli.data import build_dataset
    from kdcli.errors import ConfigError

    with pytest.raises(ConfigError, match=arg):
        build_dataset("mnist1d", {"n_train": 200, "n_test": 100, arg: value})


def test_shift_values_that_differ_beyond_six_digits_are_cached_apart(tmp_path, monkeypatch):
    from kdcli.data import build_dataset

    monkeypatch.setenv("KDCLI_CACHE_DIR", str(tmp_path))
    a = build_dataset("mnist1d", {"n_train": 200, "n_test": 100, "corr_noise": 0.3})
    b = build_dataset("mnist1d", {"n_train": 200, "n_test": 100, "corr_noise": 0.3000004})
    x, _ = gen.generate(42, "train", 0, 200, corr_noise=0.3000004)
    assert np.array_equal(b.train().x.squeeze(1).numpy(), x)
    assert not torch.equal(a.train().x, b.train().x)
