"""Dataset registry: name -> builder taking plain keyword arguments."""

from __future__ import annotations

import inspect
from collections.abc import Callable

from kdcli.errors import ConfigError

DATASETS: dict[str, Callable] = {}


def register_dataset(name: str):
    def deco(fn):
        DATASETS[name] = fn
        return fn
    return deco


def _load_builtin() -> None:
    # Importing the modules registers their datasets.
    from kdcli.data import cifar, digits, mnist1d, parquet_images, text  # noqa: F401


def dataset_names() -> list[str]:
    _load_builtin()
    return sorted(DATASETS)


def build_dataset(name: str, args: dict | None = None, data_dir: str | None = None):
    """Build a dataset by name; unknown names and arguments raise ConfigError. Built once per
    name, arguments and folder while a process runs several points (kdcli.io.shared)."""
    import json

    from kdcli.io.shared import shared

    key = (name, json.dumps(args or {}, sort_keys=True, default=str), data_dir)
    return shared("dataset", key, lambda: _build_dataset(name, args, data_dir))


def _build_dataset(name: str, args: dict | None = None, data_dir: str | None = None):
    _load_builtin()
    if name not in DATASETS:
        raise ConfigError(f"--dataset: unknown dataset {name!r}; choose one of {', '.join(sorted(DATASETS))}")
    builder = DATASETS[name]
    args = dict(args or {})
    params = inspect.signature(builder).parameters
    accepted = [p for p in params if p != "data_dir"]
    unknown = sorted(set(args) - set(accepted))
    if unknown:
        raise ConfigError(f"--dataset-arg: dataset {name!r} takes no argument {', '.join(unknown)}; "
                          f"it accepts {', '.join(accepted) or 'none'}")
    try:
        return builder(data_dir=data_dir, **args) if "data_dir" in params else builder(**args)
    except (TypeError, ValueError) as exc:  # e.g. n_train=abc
        raise ConfigError(f"--dataset-arg: dataset {name!r} cannot be built with {args} ({exc})") from None


def dataset_from_description(desc: dict, data_dir: str | None, where: str):
    """Rebuild the dataset an artifact recorded (Dataset.describe()) and check its fingerprint.

    `data_dir` overrides the recorded folder (data moved); `where` names the artifact
    in the error when the data found is not the data recorded.
    """
    from kdcli.errors import ArtifactError

    dataset = build_dataset(desc["name"], desc["args"], data_dir or desc.get("data_dir"))
    if dataset.fingerprint != desc["fingerprint"]:
        raise ArtifactError(f"{where}: dataset fingerprint mismatch; the data at "
                            f"{dataset.data_dir or 'the generator'} is not the data recorded there")
    return dataset
