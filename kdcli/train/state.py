"""Resumable training state: weights, optimiser, RNG streams, the loop's own tensors (the
epoch's order, running train metrics) and the metrics rows so far.

Everything goes to one file, RUN/checkpoint.safetensors, written atomically: the tensors,
and in the header the progress, the optimiser's other state and a sha256 of the tensors'
contents. A kill at any moment leaves the previous checkpoint whole or the new one whole,
never a mismatched pair, and damage (bit rot, truncation) is detected before a resume.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from kdcli.errors import ArtifactError
from kdcli.io.checkpoint import load_tensors, save_tensors
from kdcli.io.runs import CKPT_TENSORS, LEGACY_CKPT_STATE

STATE_VERSION = "4"  # 4: header in the sha256; 3: one file; 2: step-based, two files; 1: epochs


@dataclass
class SavedState:
    progress: dict  # what save_state was given as `progress`
    tensors: dict[str, torch.Tensor]  # the loop's own tensors, as given to save_state


def content_sha256(tensors: dict[str, torch.Tensor], header: dict) -> str:
    """sha256 over the header (as canonical JSON) and the tensors' names, dtypes, shapes and
    bytes, in name order."""
    h = hashlib.sha256(json.dumps(header, sort_keys=True, default=str).encode())
    for name in sorted(tensors):
        t = tensors[name].detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy())  # the buffer itself: no copy
    return h.hexdigest()


def save_state(run_dir: Path, *, model, optimizer, generators: dict[str, torch.Generator],
               tensors: dict[str, torch.Tensor], progress: dict) -> None:
    loop_tensors = {f"loop.{k}": v for k, v in tensors.items()}
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(loop_tensors)
    opt = optimizer.state_dict()
    scalars: dict[str, dict] = {}
    for pid, entries in opt["state"].items():
        for key, value in entries.items():
            if torch.is_tensor(value):
                tensors[f"optim.{pid}.{key}"] = value
            else:
                scalars.setdefault(str(pid), {})[key] = value
    for name, gen in generators.items():
        tensors[f"rng.{name}"] = gen.get_state()
    tensors["rng.torch"] = torch.get_rng_state()
    if torch.cuda.is_available():
        tensors.update({f"rng.cuda.{i}": st for i, st in enumerate(torch.cuda.get_rng_state_all())})
    header = json.loads(json.dumps({"progress": progress, "optimizer": {
        "param_groups": opt["param_groups"], "scalars": scalars}}, default=str))  # as it reads back
    save_tensors(run_dir / CKPT_TENSORS, tensors, {
        "format": "kdcli-train-state",
        "state_version": STATE_VERSION,
        **header,
        "tensors_sha256": content_sha256(tensors, header),
    })


def read_state(run_dir: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """The checkpoint's tensors and decoded header, checked whole; ArtifactError if it is not
    a checkpoint this kdcli can resume from."""
    path = Path(run_dir) / CKPT_TENSORS
    if (Path(run_dir) / LEGACY_CKPT_STATE).is_file():
        raise ArtifactError(f"{path}: a checkpoint of an older kdcli (two files); it cannot be "
                            "resumed by this one, use --overwrite")
    tensors, meta = load_tensors(path)
    try:
        header = {k: json.loads(meta[k]) for k in ("progress", "optimizer")}
        version, expected = meta["state_version"], meta["tensors_sha256"]
    except (KeyError, ValueError):
        raise ArtifactError(f"{path}: not a kdcli training checkpoint; use --overwrite") from None
    if meta.get("format") != "kdcli-train-state" or version != STATE_VERSION:
        raise ArtifactError(f"{path}: a checkpoint of another kdcli version ({version}); it cannot "
                            "be resumed by this one, use --overwrite")
    if content_sha256(tensors, header) != expected:
        raise ArtifactError(f"{path}: its contents do not match the sha256 recorded in it (damaged); "
                            "use --overwrite")
    return tensors, header


def saved_progress(run_dir: Path) -> dict:
    """The progress a checkpoint holds (step, rows, the settings), after checking it."""
    return read_state(run_dir)[1]["progress"]


def load_state(run_dir: Path, *, model, optimizer, generators: dict[str, torch.Generator]) -> SavedState:
    """Restore the model, optimiser and RNG streams saved by save_state; return the rest."""
    tensors, header = read_state(run_dir)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    for pid, entries in header["optimizer"]["scalars"].items():
        opt_state.setdefault(int(pid), {}).update(entries)
    optimizer.load_state_dict({"state": opt_state, "param_groups": header["optimizer"]["param_groups"]})
    for name, gen in generators.items():
        gen.set_state(tensors[f"rng.{name}"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return SavedState(header["progress"], {k[5:]: v for k, v in tensors.items() if k.startswith("loop.")})


def clear_state(run_dir: Path) -> None:
    for name in (CKPT_TENSORS, LEGACY_CKPT_STATE):
        (Path(run_dir) / name).unlink(missing_ok=True)
