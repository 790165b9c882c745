"""`dump-logits`: the teacher's raw (temperature-free) logits for its pool and the test split.

Stored once, reused by every student at every τ. Test logits are included so
fidelity can be measured without the teacher. --extra-train N adds the N fresh
train samples after the pool (mnist1d), which students with κ > 1 need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kdcli.config import DumpConfig
from kdcli.data import dataset_from_description
from kdcli.errors import ArtifactError, ConfigError
from kdcli.io.logits import read_logits, read_metadata, write_logits
from kdcli.io.provenance import now_iso, provenance
from kdcli.progress import Progress
from kdcli.teacher import resolve_teacher
from kdcli.train.device import select_device
from kdcli.train.loop import predict_batches


@dataclass
class DumpResult:
    path: Path
    skipped: bool
    rows: dict[str, int]  # split -> rows written
    metadata: dict


def run(cfg: DumpConfig, progress: Progress | None = None) -> DumpResult:
    progress = progress or Progress()
    teacher = resolve_teacher(cfg.teacher, None)
    out = Path(cfg.out)
    if out.exists() and not cfg.overwrite:
        try:
            meta = read_metadata(out, "--out")
        except ArtifactError:
            raise ArtifactError(f"--out {out}: exists and is not a kdcli logits file; "
                                "choose another name or pass --overwrite") from None
        same = (meta["teacher"]["model_sha256"] == teacher.model_sha256 and meta["dtype"] == cfg.dtype
                and meta["topk"] == (cfg.topk or 0) and meta["extra_train"] == cfg.extra_train)
        if not same:
            raise ArtifactError(f"--out {out}: holds logits of another teacher or other settings; "
                                "pass --overwrite to replace them")
        for split in ("train", "test"):  # skipped only when whole: a damaged file is named
            read_logits(out, split, "--out")
        return DumpResult(out, True, {}, meta)

    dataset = dataset_from_description(teacher.dataset, cfg.data_dir, f"--teacher {cfg.teacher}")
    if dataset.task.kind != "classification":
        raise ConfigError(f"--teacher {cfg.teacher}: dump-logits stores one row per sample; the "
                          f"{dataset.task.kind} task of {dataset.name!r} is not supported yet")
    if cfg.topk is not None and cfg.topk >= dataset.num_classes:
        raise ArtifactError(f"--topk {cfg.topk}: the teacher has only {dataset.num_classes} classes; "
                            "store full logits instead")
    splits = {"train": dataset.train(), "test": dataset.test()}
    if cfg.extra_train and not dataset.extensible:
        raise ConfigError(f"--extra-train {cfg.extra_train}: dataset {dataset.name!r} has no samples "
                          "beyond its train split (only generated datasets such as mnist1d do)")
    if cfg.extra_train:
        splits["extra"] = dataset.extra(cfg.extra_train)  # stored under split "train"
    device = select_device(cfg.device)
    model = teacher.load_model(device)
    progress.start(sum(-(-len(s) // cfg.batch_size) for s in splits.values()))

    started = now_iso()
    arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for name, split in splits.items():
        logits = np.empty((len(split), dataset.task.outputs), dtype=np.float32)
        for start, batch in predict_batches(model, split.x, dataset.model_input, cfg.batch_size, device):
            logits[start:start + len(batch)] = batch.cpu().numpy()
            progress.advance()
        arrays[name] = (split.index.numpy(), logits)
    if "extra" in arrays:
        extra = arrays.pop("extra")
        arrays["train"] = tuple(np.concatenate([a, b]) for a, b in zip(arrays["train"], extra))

    metadata = {
        "dataset": dataset.describe(),
        "dataset_fingerprint": dataset.fingerprint,
        "teacher_run_id": teacher.run_id,
        "teacher_model_sha256": teacher.model_sha256,
        "teacher": {"run_id": teacher.run_id, "dir": teacher.dir, "model_sha256": teacher.model_sha256,
                    "model_name": teacher.model_name, "model_args": teacher.model_args},
        "extra_train": cfg.extra_train,
        "provenance": provenance(started=started, inputs={"teacher_model": teacher.model_sha256}),
    }
    write_logits(out, arrays, metadata=metadata, dtype=cfg.dtype, topk=cfg.topk)
    return DumpResult(out, False, {k: len(v[0]) for k, v in arrays.items()}, metadata)
