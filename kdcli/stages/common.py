"""What every training stage does around the loop: resolve inputs, guard the run
dir, write the artifacts, and write run.json last."""

from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdcli.config import TrainConfig
from kdcli.data import Dataset, Subset, build_dataset, dataset_from_description, kappa_subset
from kdcli.errors import ArtifactError, ConfigError
from kdcli.io import runs
from kdcli.io.atomic import write_json
from kdcli.io.checkpoint import save_model
from kdcli.io.hashing import sha256_file
from kdcli.io.provenance import now_iso, provenance
from kdcli.io.tables import write_metrics, write_table
from kdcli.metrics.fidelity import fidelity
from kdcli.models import build_model, resolve_model_args
from kdcli.stages.teacher import TeacherSource, resolve_teacher, teacher_logits_for
from kdcli.train.device import choose_threads, select_device
from kdcli.train.loop import fit
from kdcli.train.state import clear_state


@dataclass
class RunResult:
    run_dir: Path
    skipped: bool  # a completed run dir was found and left alone
    run: dict  # the run.json contents
    rows: list[dict] = field(default_factory=list)


def guard_run_dir(cfg: TrainConfig) -> str:
    """Decide what to do with --out before anything is written: 'skip', 'fresh' or 'resume'."""
    status = runs.run_status(cfg.out)
    if status == "foreign":
        raise ArtifactError(f"--out {cfg.out}: exists and is not a kdcli run directory; "
                            "choose an empty or new directory")
    if status == "complete":
        if cfg.overwrite:
            return "fresh"
        check_same_settings(cfg)
        return "skip"
    if status == "partial":
        if cfg.overwrite:
            return "fresh"
        if not cfg.resume:
            raise ArtifactError(f"--out {cfg.out}: holds an interrupted run; pass --resume to continue "
                                "it or --overwrite to start again")
        if not (Path(cfg.out) / runs.CKPT_STATE).is_file():
            raise ArtifactError(f"--out {cfg.out}: interrupted before its first checkpoint; "
                                "nothing to resume, use --overwrite")
        return "resume"
    return "fresh"  # with --resume too: a slurm re-run resumes what it can and starts the rest


# Fields filled in from the teacher when not given; a skip check cannot compare them unresolved.
_RESOLVED_LATER = {"dataset": None, "model": None, "dataset_args": {}, "model_args": {}, "data_dir": None}


def _normalised(key: str, value):
    """Paths compare by where they point (a relative and an absolute path to one teacher agree)."""
    return os.path.realpath(value) if key in ("teacher", "logits") and value else value


def check_same_settings(cfg: TrainConfig) -> None:
    """A completed run is only skipped when it was made with the settings asked for now."""
    saved = json.loads((Path(cfg.out) / runs.RUN_JSON).read_text()).get("config", {})
    current = cfg.training_fields()
    changed = sorted(
        k for k, v in current.items()
        if not (k in _RESOLVED_LATER and v == _RESOLVED_LATER[k])
        and not (k == "label_smoothing" and cfg.match_smoothing_tau is not None)
        and _normalised(k, saved.get(k, v)) != _normalised(k, v))
    if changed:
        raise ArtifactError(f"--out {cfg.out}: holds a completed run made with other settings "
                            f"({', '.join(changed)}); choose another --out or pass --overwrite")


def resolve_data(cfg: TrainConfig) -> tuple[TrainConfig, Dataset, TeacherSource | None]:
    """The dataset (the teacher's, when --teacher or --logits is given) and the teacher."""
    teacher = resolve_teacher(cfg.teacher, cfg.logits)
    if teacher is None:
        cfg = cfg.replace(dataset=cfg.dataset or "mnist1d", model=cfg.model or "cnn1d")
        return cfg, build_dataset(cfg.dataset, cfg.dataset_args, cfg.data_dir), None
    tdata = teacher.dataset
    where = f"--logits {cfg.logits}" if cfg.logits else f"--teacher {cfg.teacher}"
    if cfg.dataset not in (None, tdata["name"]):
        raise ConfigError(f"--dataset {cfg.dataset}: the teacher ({where}) was trained on "
                          f"{tdata['name']!r}; a student's κ must refer to the teacher's pool")
    if cfg.dataset_args and cfg.dataset_args != {k: tdata["args"].get(k) for k in cfg.dataset_args}:
        raise ConfigError(f"--dataset-arg: differs from the teacher's dataset arguments {tdata['args']}")
    dataset = dataset_from_description(tdata, cfg.data_dir, where)
    stored_classes = teacher.logits_meta["num_classes"] if teacher.logits_meta else tdata["num_classes"]
    if stored_classes != dataset.num_classes:
        raise ArtifactError(f"{where}: holds {stored_classes} classes, the dataset "
                            f"{tdata['name']!r} has {dataset.num_classes}")
    cfg = cfg.replace(dataset=tdata["name"], dataset_args=dataset.args,
                      data_dir=dataset.data_dir, model=cfg.model or teacher.model_name)
    if cfg.model == teacher.model_name and not cfg.model_args:
        cfg = cfg.replace(model_args=_own_args(teacher.model_args))
    return cfg, dataset, teacher


def _own_args(args: dict) -> dict:
    return {k: v for k, v in args.items() if k not in ("num_classes", "input_shape")}


def make_model(cfg: TrainConfig, dataset: Dataset, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Build the model with weights drawn from --seed, identically for paired runs."""
    args = resolve_model_args(cfg.model, dataset.num_classes, dataset.input_shape, cfg.model_args)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, **args)
    if device.type == "cpu":
        torch.set_num_threads(choose_threads(cfg.threads))
    return model.to(device), args


@dataclass
class Prepared:
    """A training stage's inputs, all resolved and checked."""

    cfg: TrainConfig
    dataset: Dataset
    teacher: TeacherSource | None
    subset: Subset
    model: torch.nn.Module
    model_args: dict
    device: torch.device


def matched_smoothing(cfg: TrainConfig, dataset: Dataset, teacher: TeacherSource | None,
                      subset: Subset, device: torch.device) -> float:
    """ε whose smoothed targets carry the teacher's mean non-target mass at τ on the subset.

    PyTorch's smoothing puts ε·(C−1)/C on the non-target classes, so ε = m·C/(C−1)
    for a mean non-target mass m = mean(1 − softmax(t/τ)[y]).
    """
    if teacher is None:
        raise ConfigError("--match-smoothing-tau needs the teacher: give --teacher or --logits")
    split = subset.split
    logits = teacher_logits_for(teacher, "train", split.index.numpy(), split.x, dataset.normalise,
                                device, cfg.eval_batch_size).double().cpu()
    probs = torch.softmax(logits / cfg.match_smoothing_tau, dim=1)
    mass = 1.0 - probs[torch.arange(len(split)), split.y].mean().item()
    c = dataset.num_classes
    if c < 2:
        raise ConfigError("--match-smoothing-tau: label smoothing needs at least two classes")
    return min(mass * c / (c - 1), 0.999)


def check_resumable(cfg: TrainConfig) -> None:
    """--resume only continues a run started with the same (resolved) settings."""
    saved = json.loads((Path(cfg.out) / runs.CKPT_STATE).read_text()).get("config")
    current = cfg.training_fields()
    if saved != current:
        changed = sorted(k for k in current if saved is None or saved.get(k) != current[k])
        raise ArtifactError(f"--resume: {cfg.out} was started with different settings "
                            f"({', '.join(changed)}); use the same flags or --overwrite")


def prepare(cfg: TrainConfig, action: str) -> Prepared:
    """Everything a training stage needs, resolved and checked before anything touches --out."""
    cfg, dataset, teacher = resolve_data(cfg)
    if cfg.augment and not dataset.image:
        raise ConfigError(f"--augment: dataset {dataset.name!r} is not an image dataset; random crop "
                          "and flip apply to image datasets (cifar10, cifar100, parquet-images)")
    subset = kappa_subset(dataset, cfg.kappa, cfg.subset_seed)
    device = select_device(cfg.device)
    if cfg.match_smoothing_tau is not None:
        if cfg.label_smoothing:
            raise ConfigError("--match-smoothing-tau sets ε itself; drop --label-smoothing")
        cfg = cfg.replace(label_smoothing=matched_smoothing(cfg, dataset, teacher, subset, device))
    if action == "resume":
        check_resumable(cfg)
    model, model_args = make_model(cfg, dataset, device)
    check_forward(model, dataset, subset, device, cfg.model)
    return Prepared(cfg, dataset, teacher, subset, model, model_args, device)


def check_forward(model: torch.nn.Module, dataset: Dataset, subset: Subset, device: torch.device,
                  name: str) -> None:
    """One forward pass on two samples, so a model that cannot take this data fails before --out is touched."""
    x = dataset.normalise(subset.split.x[:2].to(device))
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except RuntimeError as exc:
        raise ConfigError(f"--model {name}: cannot take {dataset.name} inputs of shape "
                          f"{tuple(dataset.input_shape)} ({str(exc).splitlines()[0]})") from None
    finally:
        model.train()
    if out.shape[-1] != dataset.num_classes:
        raise ConfigError(f"--model {name}: gives {out.shape[-1]} outputs for {dataset.num_classes} classes")


def run_stage(cfg: TrainConfig, callbacks, *, method: str, make_loss, stage_info=None) -> RunResult:
    """The skeleton of every training stage: guard --out, resolve and check all inputs,
    then train and write the artifacts. `make_loss(prepared)` returns the loop's loss_fn
    (and may load a teacher); `stage_info(prepared)` adds fields to run.json."""
    action = guard_run_dir(cfg)
    if action == "skip":
        return skipped(cfg)
    started = now_iso()
    p = prepare(cfg, action)
    loss_fn = make_loss(p)
    extra = fidelity_metrics(p)  # reads teacher logits: a bad file fails here, before --out
    out = start_run_dir(p.cfg, action)
    rows = fit(p.cfg, p.model, p.subset.split, p.dataset.test(), normalise=p.dataset.normalise,
               loss_fn=loss_fn, device=p.device, run_dir=out, callbacks=callbacks, extra_metrics=extra)
    info = {"method": method, **(stage_info(p) if stage_info else {})}
    run = finish_run(p.cfg, out, stage_info=info, model=p.model, model_args=p.model_args,
                     dataset=p.dataset, subset=p.subset, rows=rows, started=started, teacher=p.teacher)
    return RunResult(out, False, run, rows)


def fidelity_metrics(p: Prepared):
    """Per-epoch fidelity columns when the run has a teacher (else None).

    The teacher's test logits come from the logits file when there is one, else
    from one pass of the teacher over the test split.
    """
    if p.teacher is None:
        return None
    test = p.dataset.test()
    teacher_test = teacher_logits_for(p.teacher, "test", test.index.numpy(), test.x,
                                      p.dataset.normalise, p.device, p.cfg.eval_batch_size)
    return lambda student_test: fidelity(student_test, teacher_test)


def start_run_dir(cfg: TrainConfig, action: str) -> Path:
    out = Path(cfg.out)
    if action == "fresh" and out.exists():
        # --overwrite: drop the completion marker first so a half-replaced dir never looks complete.
        (out / runs.RUN_JSON).unlink(missing_ok=True)
        for name in (runs.MODEL_FILE, runs.METRICS_FILE, runs.SUBSET_FILE):
            (out / name).unlink(missing_ok=True)
        clear_state(out)
    out.mkdir(parents=True, exist_ok=True)
    return out


def finish_run(cfg: TrainConfig, out: Path, *, stage_info: dict, model: torch.nn.Module,
               model_args: dict, dataset: Dataset, subset: Subset, rows: list[dict],
               started: str, teacher: TeacherSource | None) -> dict:
    run_id = uuid.uuid4().hex[:16]
    data = dataset.describe()
    inputs = _inputs(teacher)
    save_model(out / runs.MODEL_FILE, model, model_name=cfg.model, model_args=model_args,
               dataset=data, run_id=run_id, num_classes=dataset.num_classes, inputs=inputs)
    common_meta = {"format_version": str(runs.RUN_FORMAT_VERSION), "run_id": run_id,
                   "dataset_fingerprint": data["fingerprint"], "model_name": cfg.model,
                   "model_args": model_args, "inputs": inputs}
    write_metrics(out / runs.METRICS_FILE, rows, {"format": "kdcli-metrics", **common_meta})
    write_table(out / runs.SUBSET_FILE, {"index": subset.indices},
                {"format": "kdcli-subset", **common_meta, "kappa": str(subset.kappa),
                 "subset_seed": str(subset.seed), "n_pool": str(subset.n_pool), "sha256": subset.sha256})
    run = {
        "format": "kdcli-run",
        "format_version": runs.RUN_FORMAT_VERSION,
        "run_id": run_id,
        "stage": cfg.stage,
        **stage_info,
        "config": cfg.to_dict(),
        "dataset": data,
        "model": {"name": cfg.model, "args": model_args,
                  "parameters": sum(p.numel() for p in model.parameters())},
        "subset": {"kappa": cfg.kappa, "seed": cfg.subset_seed, "size": len(subset.split),
                   "n_pool": subset.n_pool, "sha256": subset.sha256, "file": runs.SUBSET_FILE},
        "teacher": None if teacher is None else teacher.record(),
        "selection": "last epoch (no model selection on the test set)",
        "final": rows[-1],
        "artifacts": {name: sha256_file(out / name)
                      for name in (runs.MODEL_FILE, runs.METRICS_FILE, runs.SUBSET_FILE)},
        "provenance": provenance(started=started, inputs=inputs,
                                 seeds={"seed": cfg.seed, "subset_seed": cfg.subset_seed}),
    }
    write_json(out / runs.RUN_JSON, run)  # the completion marker, last
    clear_state(out)
    return run


def _inputs(teacher: TeacherSource | None) -> dict:
    if teacher is None:
        return {}
    inputs = {"teacher_model": teacher.model_sha256}
    if teacher.logits:
        inputs["logits"] = teacher.logits_sha256
    return inputs


def skipped(cfg: TrainConfig) -> RunResult:
    return RunResult(Path(cfg.out), True, json.loads((Path(cfg.out) / runs.RUN_JSON).read_text()))
