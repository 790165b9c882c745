"""Where a student's teacher comes from: a teacher run dir, a logits file, or both.

Both carry the teacher's dataset description (name, arguments, fingerprint,
pool size), so a student's κ subset always refers to the teacher's pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdcli.errors import ArtifactError
from kdcli.io import runs
from kdcli.io.hashing import sha256_file
from kdcli.io.logits import read_logits, read_metadata
from kdcli.train.loop import predict


@dataclass(frozen=True)
class TeacherSource:
    run_id: str
    dir: str
    model_sha256: str
    model_name: str
    model_args: dict
    dataset: dict  # the teacher's dataset description (Dataset.describe())
    logits: str | None = None  # a logits file, for offline distillation
    logits_sha256: str | None = None
    logits_meta: dict | None = None

    def record(self) -> dict:
        """What run.json stores about the teacher."""
        return {"run_id": self.run_id, "dir": self.dir, "model_sha256": self.model_sha256,
                "logits": self.logits, "logits_sha256": self.logits_sha256}


def resolve_teacher(teacher_dir: str | None, logits: str | None) -> TeacherSource | None:
    """Read (and check) the teacher run and/or logits file; None when neither is given."""
    run = runs.read_run(teacher_dir) if teacher_dir else None
    if run is not None and run.get("stage") != "train-teacher":
        # A student trained on a κ subset would make n_T (and so every κ) ambiguous.
        raise ArtifactError(f"--teacher {teacher_dir}: is a {run.get('stage')} run, not a teacher; "
                            "train one with `kdcli train-teacher`")
    if logits is None:
        if run is None:
            return None
        return TeacherSource(run["run_id"], run["dir"], run["artifacts"][runs.MODEL_FILE],
                             run["model"]["name"], run["model"]["args"], run["dataset"])
    meta = read_metadata(logits)
    t = meta["teacher"]
    if run is not None and run["artifacts"][runs.MODEL_FILE] != t["model_sha256"]:
        raise ArtifactError(f"--logits {logits}: was dumped from teacher {t['run_id']} "
                            f"(weights {t['model_sha256'][:12]}), not from --teacher {teacher_dir}")
    return TeacherSource(t["run_id"], t["dir"], t["model_sha256"], t["model_name"], t["model_args"],
                         meta["dataset"], str(Path(logits).resolve()), sha256_file(logits), meta)


def load_teacher_model(source: TeacherSource, device: torch.device) -> torch.nn.Module:
    """The teacher network in eval mode, after checking its weights are the recorded ones."""
    from kdcli.io.checkpoint import load_model

    path = Path(source.dir) / runs.MODEL_FILE
    if not path.is_file() or sha256_file(path) != source.model_sha256:
        raise ArtifactError(f"--teacher {source.dir}: {runs.MODEL_FILE} is missing or its sha256 no "
                            "longer matches the one recorded (modified, truncated or replaced)")
    model, _ = load_model(path, device)
    return model.eval().requires_grad_(False)


def teacher_logits_for(source: TeacherSource, split: str, ids: np.ndarray, x: torch.Tensor,
                       normalise, device: torch.device, batch_size: int = 2048) -> torch.Tensor:
    """Teacher logits of samples `ids` of a split: from the file if there is one, else by inference."""
    if source.logits is not None:
        return read_logits(source.logits, split).rows_for(ids, f"--logits {source.logits} ({split})").to(device)
    return predict(load_teacher_model(source, device), x.to(device), normalise, batch_size)
