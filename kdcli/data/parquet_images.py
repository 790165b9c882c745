"""Image-classification Parquet in the Hugging Face layout (e.g. ../shared/data/cifar10-jpeg).

Layout: DATA_DIR/train.parquet and DATA_DIR/test.parquet, an image column that is
a struct {bytes: binary, path: string} of encoded images (JPEG/PNG), an int64
label column, and class names as a JSON list in the schema metadata key
`classes` (or given with --dataset-arg classes=a,b,c).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np

from kdcli.data.base import Dataset, Split, as_split
from kdcli.data.cache import cached_arrays
from kdcli.data.registry import register_dataset
from kdcli.errors import ConfigError, DataError
from kdcli.io.hashing import sha256_file

# Channel statistics of CIFAR-10's training set, the usual choice for natural images.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def _decode(blobs: list[bytes], path: Path) -> np.ndarray:
    from PIL import Image

    images = []
    for i, blob in enumerate(blobs):
        try:
            images.append(np.asarray(Image.open(io.BytesIO(blob)).convert("RGB")))
        except Exception as exc:
            raise DataError(f"{path}: row {i} does not hold a decodable image ({exc})") from None
    if len({im.shape for im in images}) > 1:
        raise DataError(f"{path}: images have different sizes; kdcli expects one size per dataset")
    return np.stack(images).transpose(0, 3, 1, 2)  # NHWC -> NCHW, uint8


def read_image_parquet(path: Path, image_column: str, label_column: str) -> tuple[np.ndarray, np.ndarray, list | None]:
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path, columns=[image_column, label_column])
    except FileNotFoundError:
        raise DataError(f"--data-dir: {path} not found (expected train.parquet and test.parquet)") from None
    except Exception as exc:
        raise DataError(f"{path}: not readable as Parquet with columns {image_column!r} and "
                        f"{label_column!r} ({exc})") from None
    column = table.column(image_column).combine_chunks()
    blobs = column.field("bytes").to_pylist() if hasattr(column, "field") else column.to_pylist()
    labels = table.column(label_column).to_numpy().astype(np.int64)
    meta = table.schema.metadata or {}
    classes = json.loads(meta[b"classes"]) if b"classes" in meta else None
    return _decode(blobs, path), labels, classes


class ParquetImages(Dataset):
    name = "parquet-images"
    image = True
    mean, std = CIFAR_MEAN, CIFAR_STD

    def __init__(self, args: dict, data_dir: str):
        super().__init__(args, data_dir)
        root = Path(data_dir)
        self.paths = {s: root / f"{s}.parquet" for s in ("train", "test")}
        for split, path in self.paths.items():
            if not path.is_file():
                raise DataError(f"--data-dir {data_dir}: no {split}.parquet there (expected "
                                "train.parquet and test.parquet in the Hugging Face image layout)")
        self._arrays = {s: self._read(p) for s, p in self.paths.items()}
        classes = args.get("classes") or self._arrays["train"]["classes"]
        n_labels = int(max(a["y"].max() for a in self._arrays.values())) + 1
        self.class_names = list(classes) if classes else [str(i) for i in range(n_labels)]
        self.num_classes = len(self.class_names)
        if n_labels > self.num_classes:
            raise DataError(f"--data-dir {data_dir}: labels go up to {n_labels - 1} but there are "
                            f"only {self.num_classes} class names")
        self.input_shape = tuple(self._arrays["train"]["x"].shape[1:])

    def _read(self, path: Path) -> dict:
        key = f"parquet-images/{sha256_file(path)}-{self.args['image_column']}-{self.args['label_column']}"
        def make():
            x, y, names = read_image_parquet(path, self.args["image_column"], self.args["label_column"])
            return {"x": x, "y": y, "classes": np.asarray(names or [], dtype=str)}

        arrays = cached_arrays(key, make)
        return {"x": arrays["x"], "y": arrays["y"], "classes": [str(c) for c in arrays["classes"]]}

    def _load(self) -> tuple[Split, Split]:
        return tuple(as_split(self._arrays[s]["x"], self._arrays[s]["y"]) for s in ("train", "test"))


@register_dataset("parquet-images")
def parquet_images(data_dir: str | None = None, image_column: str = "img",
                   label_column: str = "label", classes: str | None = None) -> ParquetImages:
    if not data_dir:
        raise ConfigError("--data-dir is required for dataset 'parquet-images' "
                          "(a folder with train.parquet and test.parquet)")
    args = {"image_column": image_column, "label_column": label_column,
            "classes": classes.split(",") if isinstance(classes, str) else classes}
    return ParquetImages(args, str(Path(data_dir).resolve()))
