"""Resumable training state: weights, optimiser, RNG streams, the loop's own tensors (the
epoch's order, running train metrics) and the metrics rows so far.

Tensors go to RUN/checkpoint.safetensors, the rest to RUN/checkpoint.json,
which is written second and records the tensors' sha256, so a crash between
the two writes is detected instead of resuming from a mismatched pair.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch

from kdcli.errors import ArtifactError
from kdcli.io.atomic import write_json
from kdcli.io.checkpoint import load_tensors, save_tensors
from kdcli.io.hashing import sha256_file
from kdcli.io.runs import CKPT_STATE, CKPT_TENSORS

STATE_VERSION = 2  # 2: step-based (checkpoints inside an epoch keep its order)


@dataclass
class SavedState:
    progress: dict  # what save_state was given as `progress`
    tensors: dict[str, torch.Tensor]  # the loop's own tensors, as given to save_state


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
    save_tensors(run_dir / CKPT_TENSORS, tensors, {"format": "kdcli-train-state"})
    write_json(run_dir / CKPT_STATE, {
        "state_version": STATE_VERSION,
        **progress,
        "optimizer": {"param_groups": opt["param_groups"], "scalars": scalars},
        "tensors_sha256": sha256_file(run_dir / CKPT_TENSORS),
    })


def load_state(run_dir: Path, *, model, optimizer, generators: dict[str, torch.Generator]) -> SavedState:
    """Restore the model, optimiser and RNG streams saved by save_state; return the rest."""
    state_path = run_dir / CKPT_STATE
    try:
        state = json.loads(state_path.read_text())
    except (OSError, ValueError) as exc:
        raise ArtifactError(f"{state_path}: unreadable training state ({exc}); use --overwrite") from None
    if state.get("state_version") != STATE_VERSION:
        raise ArtifactError(f"{state_path}: a checkpoint of an older kdcli (epoch-based); it cannot be "
                            "resumed by this one, use --overwrite")
    if sha256_file(run_dir / CKPT_TENSORS) != state["tensors_sha256"]:
        raise ArtifactError(f"{run_dir / CKPT_TENSORS}: does not match {CKPT_STATE}; use --overwrite")
    tensors, _ = load_tensors(run_dir / CKPT_TENSORS)
    model.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    opt_state: dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith("optim."):
            _, pid, name = key.split(".", 2)
            opt_state.setdefault(int(pid), {})[name] = value
    for pid, entries in state["optimizer"]["scalars"].items():
        opt_state.setdefault(int(pid), {}).update(entries)
    optimizer.load_state_dict({"state": opt_state, "param_groups": state["optimizer"]["param_groups"]})
    for name, gen in generators.items():
        gen.set_state(tensors[f"rng.{name}"])
    torch.set_rng_state(tensors["rng.torch"])
    cuda_states = [tensors[k] for k in sorted(tensors) if k.startswith("rng.cuda.")]
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states)
    return SavedState(state, {k[5:]: v for k, v in tensors.items() if k.startswith("loop.")})


def clear_state(run_dir: Path) -> None:
    for name in (CKPT_STATE, CKPT_TENSORS):
        (run_dir / name).unlink(missing_ok=True)
