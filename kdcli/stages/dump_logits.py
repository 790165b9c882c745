"""`dump-logits`: the teacher's raw (temperature-free) logits for its pool and the test split.

Stored once, reused by every student at every τ. Test logits are included so
fidelity can be measured without the teacher. A text teacher stores a row per window of
T token positions, top-k per position (--topk) unless the vocabulary is small. Written
batch by batch: nothing [N, T, V] is ever held. --extra-train N adds the N fresh
train samples after the pool (mnist1d), which students with κ > 1 need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from kdcli.config import DumpConfig
from kdcli.data import dataset_from_description
from kdcli.errors import ArtifactError, ConfigError
from kdcli.io.logits import LogitsWriter, read_logits, read_metadata
from kdcli.io.provenance import now_iso, provenance
from kdcli.progress import Progress
from kdcli.teacher import resolve_teacher
from kdcli.train.device import select_device
from kdcli.train.loop import inference_batch, predict_batches

# Text teachers store full logits per token only for vocabularies up to this size (1 KB per
# token in float16 at 512); above it --topk is required.
DENSE_MAX_VOCAB = 512


def _file_order(name: str) -> tuple:
    """train, its extra samples, test, then further test splits by name."""
    fixed = ("train", "extra", "test")
    return (fixed.index(name), "") if name in fixed else (len(fixed), name)


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
        for split in meta.get("content_sha256") or ("train", "test"):  # skipped only when whole
            read_logits(out, split, "--out")
        return DumpResult(out, True, {}, meta)

    dataset = dataset_from_description(teacher.dataset, cfg.data_dir, f"--teacher {cfg.teacher}")
    task = dataset.task
    if cfg.topk is not None and cfg.topk >= task.outputs:
        raise ConfigError(f"--topk {cfg.topk}: the teacher has only {task.outputs} classes; "
                          "store full logits instead (no --topk), or K < V")
    if cfg.topk is None and task.kind == "sequence" and task.outputs > DENSE_MAX_VOCAB:
        raise ConfigError(f"--topk: a vocabulary of {task.outputs} tokens is too large to store densely "
                          f"per token (up to {DENSE_MAX_VOCAB}); pass --topk K, e.g. --topk 32")
    splits = {"train": dataset.train(), "test": dataset.test()}
    if cfg.extra_train and not dataset.extensible:
        raise ConfigError(f"--extra-train {cfg.extra_train}: dataset {dataset.name!r} has no samples "
                          "beyond its train split (only generated datasets such as mnist1d do)")
    if cfg.extra_train:
        splits["extra"] = dataset.extra(cfg.extra_train)  # stored under split "train"
    splits.update(dataset.extra_tests())  # e.g. "ood": an out-of-distribution test text
    device = select_device(cfg.device)
    model = teacher.load_model(device)
    batch = {name: inference_batch(cfg.batch_size, split, task) for name, split in splits.items()}
    progress.start(sum(-(-len(s) // batch[name]) for name, s in splits.items()))

    started = now_iso()
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
    positions = dataset.train().y.shape[1] if task.kind == "sequence" else 0
    rows = {}
    with LogitsWriter(out, metadata, task.outputs, positions, cfg.dtype, cfg.topk) as writer:
        # a split's rows in file order are its canonical order
        for name in sorted(splits, key=_file_order):
            split, stored_as = splits[name], "train" if name == "extra" else name
            for start, logits in predict_batches(model, split.x, dataset.model_input, batch[name], device):
                writer.write(stored_as, split.index[start:start + len(logits)].numpy(), logits)
                progress.advance()
            rows[stored_as] = rows.get(stored_as, 0) + len(split)
    return DumpResult(out, False, rows, metadata)
