"""The dataset registry and the file-backed datasets (Parquet images, CIFAR pickles)."""

from __future__ import annotations

import inspect
import io
import json
import os
import pickle

import numpy as np
import pytest
import torch

from kdcli.data import build_dataset, dataset_names
from kdcli.data.registry import DATASETS
from kdcli.errors import ConfigError, DataError
from tests.conftest import SHARED_DATA

# Small arguments for datasets that build without files; others use their defaults.
SMALL_ARGS = {"mnist1d": {"n_train": 200, "n_test": 100}}


def _needs_data_dir(name):
    return "data_dir" in inspect.signature(DATASETS[name]).parameters


def _check_dataset(ds):
    info = ds.describe()
    assert {"name", "args", "fingerprint", "num_classes", "n_train", "n_test"} <= set(info)
    json.dumps(info)  # recorded in artifacts
    assert info["n_train"] == len(ds.train()) > 0 and info["n_test"] == len(ds.test()) > 0
    assert info["num_classes"] == ds.num_classes >= 2
    for split in (ds.train(), ds.test()):
        assert tuple(split.x.shape) == (len(split), *ds.input_shape)
        assert split.x.dtype == (torch.uint8 if ds.image else torch.float32)
        assert split.y.dtype == split.index.dtype == torch.int64
        assert int(split.y.min()) >= 0 and int(split.y.max()) < ds.num_classes
        assert torch.equal(split.index.sort().values, split.index) and len(set(split.index.tolist())) == len(split)
        assert ds.model_input(split.x[:4]).dtype == torch.float32
    assert ds.split("train") is ds.train() and ds.split("test") is ds.test()
    with pytest.raises(ConfigError, match="--split"):
        ds.split("val")


@pytest.mark.parametrize("name", dataset_names())
def test_every_registered_dataset(name):
    if _needs_data_dir(name):
        with pytest.raises(ConfigError, match="--data-dir"):
            build_dataset(name, {})
    else:
        ds = build_dataset(name, SMALL_ARGS.get(name, {}))
        assert ds.name == name
        _check_dataset(ds)


def test_builtin_names():
    assert {"mnist1d", "digits", "cifar10", "cifar100", "parquet-images"} <= set(dataset_names())


def test_digits():
    ds = build_dataset("digits", {"n_test": 300})
    assert (len(ds.train()), len(ds.test())) == (1497, 300)
    assert ds.input_shape == (1, 8, 8) and ds.num_classes == 10
    x = ds.train().x
    assert float(x.min()) >= -1 and float(x.max()) <= 1
    assert ds.fingerprint == build_dataset("digits", {"n_test": 300}).fingerprint
    assert ds.fingerprint != build_dataset("digits", {"n_test": 300, "split_seed": 1}).fingerprint
    with pytest.raises(ConfigError, match="n_test"):
        build_dataset("digits", {"n_test": 5})


def test_unknown_dataset_lists_valid_names():
    with pytest.raises(ConfigError) as err:
        build_dataset("imagenet")
    message = str(err.value)
    assert "imagenet" in message
    for name in dataset_names():
        assert name in message


@pytest.mark.parametrize("name,arg", [("mnist1d", "n_samples"), ("digits", "n_train"), ("digits", "data_dir")])
def test_unknown_dataset_argument_is_named(name, arg):
    with pytest.raises(ConfigError, match=arg):
        build_dataset(name, {arg: 1})


def test_mnist1d_too_few_samples():
    with pytest.raises(ConfigError, match="n_train"):
        build_dataset("mnist1d", {"n_train": 5})


# ------------------------------------------------------------- parquet-images

CLASSES = ["cat", "dog", "bird", "frog"]


def _write_image_parquet(path, images, labels, classes=CLASSES):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    image_mod = pytest.importorskip("PIL.Image")
    rows = []
    for i, im in enumerate(images):  # HWC uint8
        buf = io.BytesIO()
        image_mod.fromarray(im, "RGB").save(buf, format="PNG")
        rows.append({"bytes": buf.getvalue(), "path": f"{i}.png"})
    img_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"img": pa.array(rows, type=img_type), "label": pa.array(labels, type=pa.int64())})
    if classes is not None:
        table = table.replace_schema_metadata({b"classes": json.dumps(classes).encode()})
    pq.write_table(table, path)


@pytest.fixture
def image_parquet(tmp_path):
    rng = np.random.default_rng(0)
    data = {}
    for split, n in (("train", 12), ("test", 6)):
        images = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        labels = rng.integers(0, 3, n)  # class 3 ("frog") has no samples: num_classes comes from metadata
        _write_image_parquet(tmp_path / f"{split}.parquet", images, labels)
        data[split] = images, labels
    return tmp_path, data


def test_parquet_images_decode_exactly(image_parquet):
    root, data = image_parquet
    ds = build_dataset("parquet-images", data_dir=str(root))
    assert ds.image and ds.num_classes == 4 and ds.class_names == CLASSES
    assert ds.input_shape == (3, 8, 8)
    for split in ("train", "test"):
        images, labels = data[split]
        s = ds.split(split)
        assert s.x.dtype == torch.uint8
        assert np.array_equal(s.x.numpy(), images.transpose(0, 3, 1, 2))  # PNG is lossless
        assert np.array_equal(s.y.numpy(), labels)
    _check_dataset(ds)
    assert ds.describe()["data_dir"] == str(root.resolve())
    # cached decode gives the same dataset
    assert build_dataset("parquet-images", data_dir=str(root)).fingerprint == ds.fingerprint


def test_parquet_images_normalise(image_parquet):
    root, data = image_parquet
    ds = build_dataset("parquet-images", data_dir=str(root))
    x = ds.train().x[:3]
    mean = np.asarray(ds.mean, dtype=np.float64)[None, :, None, None]
    std = np.asarray(ds.std, dtype=np.float64)[None, :, None, None]
    expected = (x.numpy().astype(np.float64) / 255 - mean) / std
    np.testing.assert_allclose(ds.model_input(x).numpy(), expected, rtol=1e-6, atol=1e-6)


def test_parquet_images_class_names_argument(image_parquet):
    root, _ = image_parquet
    ds = build_dataset("parquet-images", {"classes": "a,b,c,d,e"}, data_dir=str(root))
    assert ds.class_names == ["a", "b", "c", "d", "e"] and ds.num_classes == 5
    with pytest.raises(DataError, match="class names"):
        build_dataset("parquet-images", {"classes": "a,b"}, data_dir=str(root))


def test_parquet_images_without_metadata(tmp_path):
    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        _write_image_parquet(tmp_path / f"{split}.parquet", rng.integers(0, 256, (5, 8, 8, 3), dtype=np.uint8),
                             [0, 1, 2, 1, 0], classes=None)
    ds = build_dataset("parquet-images", data_dir=str(tmp_path))
    assert ds.num_classes == 3 and ds.class_names == ["0", "1", "2"]


def test_parquet_images_missing_test_file(image_parquet):
    root, _ = image_parquet
    (root / "test.parquet").unlink()
    with pytest.raises(DataError, match="test.parquet"):
        build_dataset("parquet-images", data_dir=str(root))


def test_parquet_images_not_parquet(image_parquet):
    root, _ = image_parquet
    (root / "train.parquet").write_bytes(b"this is not parquet\n" * 10)
    with pytest.raises(DataError, match="train.parquet"):
        build_dataset("parquet-images", data_dir=str(root))


def test_parquet_images_undecodable_image(tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    img_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"img": pa.array([{"bytes": b"\x89PNG broken", "path": "0.png"}], type=img_type),
                      "label": pa.array([0], type=pa.int64())})
    for split in ("train", "test"):
        pq.write_table(table, tmp_path / f"{split}.parquet")
    with pytest.raises(DataError, match="row 0"):
        build_dataset("parquet-images", data_dir=str(tmp_path))


@pytest.mark.slow
def test_shared_cifar10_jpeg():
    root = SHARED_DATA / "cifar10-jpeg"
    if not (root / "train.parquet").is_file():
        pytest.skip(f"shared CIFAR-10 JPEG copy not found at {root}")
    ds = build_dataset("parquet-images", data_dir=str(root))
    assert ds.input_shape == (3, 32, 32) and ds.num_classes == 10 and ds.image
    assert tuple(ds.train().x.shape) == (50_000, 3, 32, 32) and ds.train().x.dtype == torch.uint8
    assert tuple(ds.test().x.shape) == (10_000, 3, 32, 32)
    assert np.array_equal(np.bincount(ds.test().y.numpy(), minlength=10), np.full(10, 1000))
    assert len(ds.class_names) == 10


# ---------------------------------------------------------- CIFAR, torchvision


def _dump(path, obj, protocol=2):
    # torchvision's CIFAR files are Python 2 pickles (protocol 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=protocol)


def _fake_cifar10(root, n=4, protocol=2):
    rng = np.random.default_rng(0)
    base = root / "cifar-10-batches-py"
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, 10, n)]
        _dump(base / name, {"data": data, "labels": labels, "batch_label": name}, protocol)
        batches[name] = data, labels
    _dump(base / "batches.meta", {"label_names": [f"class{i}" for i in range(10)], "num_vis": 3072}, protocol)
    return batches


def test_cifar10_torchvision_layout(tmp_path):
    batches = _fake_cifar10(tmp_path)
    ds = build_dataset("cifar10", data_dir=str(tmp_path))
    assert ds.num_classes == 10 and ds.image and ds.class_names == [f"class{i}" for i in range(10)]
    train_x = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)]).reshape(-1, 3, 32, 32)
    train_y = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert np.array_equal(ds.train().x.numpy(), train_x)
    assert ds.train().y.tolist() == train_y
    assert np.array_equal(ds.test().x.numpy(), batches["test_batch"][0].reshape(-1, 3, 32, 32))
    assert ds.test().y.tolist() == batches["test_batch"][1]
    _check_dataset(ds)


def test_cifar100_torchvision_layout(tmp_path):
    rng = np.random.default_rng(1)
    base = tmp_path / "cifar-100-python"
    data = {}
    for split, n in (("train", 7), ("test", 3)):
        x = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        y = [int(v) for v in rng.integers(0, 100, n)]
        _dump(base / split, {"data": x, "fine_labels": y, "coarse_labels": [0] * n})
        data[split] = x, y
    _dump(base / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    ds = build_dataset("cifar100", data_dir=str(tmp_path))
    assert ds.num_classes == 100 and len(ds.class_names) == 100
    for split in ("train", "test"):
        assert np.array_equal(ds.split(split).x.numpy(), data[split][0].reshape(-1, 3, 32, 32))
        assert ds.split(split).y.tolist() == data[split][1]
    _check_dataset(ds)


@pytest.mark.parametrize("protocol", [0, 2, 4])
def test_cifar_pickle_protocols(tmp_path, protocol):
    batches = _fake_cifar10(tmp_path, n=2, protocol=protocol)
    ds = build_dataset("cifar10", data_dir=str(tmp_path))
    assert np.array_equal(ds.test().x.numpy(), batches["test_batch"][0].reshape(-1, 3, 32, 32))


def test_cifar_pickle_protocol_5(tmp_path):
    batches = _fake_cifar10(tmp_path, n=2, protocol=5)
    ds = build_dataset("cifar10", data_dir=str(tmp_path))
    assert np.array_equal(ds.test().x.numpy(), batches["test_batch"][0].reshape(-1, 3, 32, 32))


def test_cifar_missing_folder_and_file(tmp_path):
    with pytest.raises(DataError, match="cifar-10-batches-py"):
        build_dataset("cifar10", data_dir=str(tmp_path))
    _fake_cifar10(tmp_path, n=2)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").unlink()
    ds = build_dataset("cifar10", data_dir=str(tmp_path))
    with pytest.raises(DataError, match="data_batch_3"):
        ds.train()


class _Exploit:
    """Pickles as a call to `func(arg)`: what a doctored CIFAR file would hold."""

    def __init__(self, func, arg):
        self.func, self.arg = func, arg

    def __reduce__(self):
        return self.func, (self.arg,)


@pytest.mark.parametrize("where", ["data_batch_1", "batches.meta"])
@pytest.mark.parametrize("attack", ["os.system", "builtins.eval"])
def test_cifar_refuses_code_in_pickles(tmp_path, where, attack):
    _fake_cifar10(tmp_path, n=2)
    marker = tmp_path / "pwned"
    payload = (_Exploit(os.system, f"touch {marker}") if attack == "os.system"
               else _Exploit(eval, f"open({str(marker)!r}, 'w').close()"))
    _dump(tmp_path / "cifar-10-batches-py" / where, {"data": payload, "labels": [0], "label_names": payload})
    with pytest.raises(DataError, match=where):
        build_dataset("cifar10", data_dir=str(tmp_path)).train()
    assert not marker.exists()
