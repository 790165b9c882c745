"""Model weights as safetensors, with self-describing header metadata.

safetensors metadata is a flat str -> str map; structured values (model
arguments, dataset description) are stored as JSON strings.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from kdcli.errors import ArtifactError
from kdcli.io.atomic import atomic_path
from kdcli.io.meta import encode

MODEL_FORMAT_VERSION = "1"


def save_tensors(path: str | os.PathLike, tensors: dict[str, torch.Tensor], metadata: dict) -> None:
    """Write tensors atomically; metadata values that are not strings are JSON-encoded."""
    from safetensors.torch import save_file

    meta = encode(metadata)
    flat = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    with atomic_path(path) as tmp:
        try:
            save_file(flat, str(tmp), metadata=meta)
        except OSError:
            raise
        except Exception as exc:  # safetensors raises its own error type for a full disk
            raise ArtifactError(f"{path}: cannot write ({exc}); check the free space and "
                                "permissions there") from None


def load_tensors(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Read every tensor and the raw metadata; a damaged file raises ArtifactError."""
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise ArtifactError(f"{path}: file not found (expected a safetensors checkpoint)")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as exc:  # safetensors raises several types for damaged headers/bodies
        raise ArtifactError(
            f"{path}: not a readable safetensors file, it may be truncated or corrupt ({exc})"
        ) from None
    return tensors, meta


def save_model(path, model: torch.nn.Module, *, model_name: str, model_args: dict,
               dataset: dict, run_id: str, num_classes: int, inputs: dict | None = None) -> None:
    """Weights plus what rebuilds and identifies them; `inputs` are the sha256 of input artifacts."""
    save_tensors(path, model.state_dict(), {
        "format": "kdcli-model",
        "format_version": MODEL_FORMAT_VERSION,
        "model_name": model_name,
        "model_args": model_args,
        "dataset_fingerprint": dataset["fingerprint"],
        "dataset": dataset,
        "num_classes": str(num_classes),
        "run_id": run_id,
        "inputs": inputs or {},
    })


def load_model(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[torch.nn.Module, dict]:
    """Rebuild a model from its checkpoint alone: name and arguments come from the header."""
    from kdcli.models import build_model

    tensors, meta = load_tensors(path)
    if meta.get("format") != "kdcli-model":
        raise ArtifactError(f"{path}: not a kdcli model checkpoint (no kdcli header metadata)")
    if meta.get("format_version") != MODEL_FORMAT_VERSION:
        raise ArtifactError(
            f"{path}: model format version {meta.get('format_version')!r}, "
            f"this kdcli reads version {MODEL_FORMAT_VERSION}"
        )
    info = {
        "model_name": meta["model_name"],
        "model_args": json.loads(meta["model_args"]),
        "dataset": json.loads(meta["dataset"]),
        "dataset_fingerprint": meta["dataset_fingerprint"],
        "num_classes": int(meta["num_classes"]),
        "run_id": meta["run_id"],
    }
    model = build_model(info["model_name"], **info["model_args"])
    try:
        model.load_state_dict(tensors)
    except RuntimeError as exc:
        raise ArtifactError(f"{path}: weights do not fit model {info['model_name']} ({exc})") from None
    return model.to(device), info
