"""Where a student's teacher comes from (a teacher run dir, a logits file, or both), and its
logits for the samples of a split, batch by batch.

Both sources carry the teacher's dataset description (name, arguments, fingerprint,
pool size), so a student's κ subset always refers to the teacher's pool.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from kdcli.data.base import Split
from kdcli.errors import ArtifactError
from kdcli.io import runs
from kdcli.io.hashing import sha256_file
from kdcli.io.logits import TeacherLogits, read_logits, read_metadata
from kdcli.io.shared import file_identity, shared
from kdcli.losses.topk import TopK


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

    @property
    def where(self) -> str:
        """The flag that named this teacher, for error messages."""
        return f"--logits {self.logits}" if self.logits else f"--teacher {self.dir}"

    def record(self) -> dict:
        """What run.json stores about the teacher."""
        return {"run_id": self.run_id, "dir": self.dir, "model_sha256": self.model_sha256,
                "logits": self.logits, "logits_sha256": self.logits_sha256,
                "dataset_fingerprint": self.dataset["fingerprint"]}

    def inputs(self) -> dict:
        """The sha256 of the input artifacts, as every output's metadata records them."""
        inputs = {"teacher_model": self.model_sha256}
        if self.logits:
            inputs["logits"] = self.logits_sha256
        return inputs

    def load_model(self, device: torch.device) -> torch.nn.Module:
        """The teacher network in eval mode, after checking its weights are the recorded ones."""
        from kdcli.io.checkpoint import load_model

        path = Path(self.dir) / runs.MODEL_FILE
        if not path.is_file() or sha256_file(path) != self.model_sha256:
            raise ArtifactError(f"--teacher {self.dir}: {runs.MODEL_FILE} is missing or its sha256 no "
                                "longer matches the one recorded (modified, truncated or replaced)")
        model, _ = load_model(path, device)
        return model.eval().requires_grad_(False)

    def rows(self, split_name: str, split: Split, device: torch.device,
             model: torch.nn.Module | None = None) -> TeacherRows:
        """The teacher's logits for samples of `split` (`split_name` of the teacher's dataset):
        from the logits file when there is one (checked to hold every sample now), else by
        running the teacher network (`model`, or loaded now) on each batch."""
        if self.logits is not None:
            stored = read_logits(self.logits, split_name)
            where = stored.positions_for(split.index.numpy(), f"--logits {self.logits} ({split_name})")
            return StoredRows(stored, where, device)
        return OnlineRows(model if model is not None else self.load_model(device))


class TeacherRows:
    """Teacher logits of a batch: float32 [B, ..., V] for split positions `positions`, whose
    model inputs are `x` (possibly augmented; only an online teacher looks at them)."""

    def __call__(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError


class StoredRows(TeacherRows):
    """Rows of a logits file. Dense rows of one sample each (classification) are put in split
    order once, as stored (float16 stays float16), so a batch is one gather; rows of T token
    positions are looked up batch by batch; top-k rows stay as stored: the KD loss uses them
    as they are (`topk`), and they are densified only for a caller that asks for full rows."""

    def __init__(self, stored: TeacherLogits, file_rows: torch.Tensor, device: torch.device):
        self.sparse = stored.dense is None
        if stored.dense is not None and stored.dense.ndim == 2:  # only the split's rows move
            self.gathered, self.stored, self.file_rows = stored.dense[file_rows].to(device), None, None
        else:
            self.gathered, self.stored, self.file_rows = None, stored.to(device), file_rows.to(device)

    def __call__(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.gathered is not None:
            return self.gathered[positions].float()
        return self.stored.rows(self.file_rows[positions])

    def topk(self, positions: torch.Tensor) -> TopK:
        """The stored top-k rows of a batch, [B, ..., K]."""
        return self.stored.topk(self.file_rows[positions])


class OnlineRows(TeacherRows):
    def __init__(self, model: torch.nn.Module):
        self.model = model

    def __call__(self, positions: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.model(x).float()


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
    digest = shared("sha256", file_identity(logits), lambda: sha256_file(logits))
    return TeacherSource(t["run_id"], t["dir"], t["model_sha256"], t["model_name"], t["model_args"],
                         meta["dataset"], str(Path(logits).resolve()), digest, meta)
