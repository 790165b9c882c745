"""`train-teacher` and `train-labels`: thin commands over kdcli.stages.train."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from kdcli.cli import options as o
from kdcli.cli.main import app


def _train_config(stage: str, **kw):
    from kdcli.config import TrainConfig

    kw["dataset_args"] = o.parse_kv(kw.pop("dataset_arg"), "--dataset-arg")
    kw["model_args"] = o.parse_kv(kw.pop("model_arg"), "--model-arg")
    kw.pop("quiet")
    return TrainConfig(stage=stage, **kw)


def _run(cfg, quiet: bool, title: str) -> None:
    from kdcli.cli.display import ProgressBar, console, err_console, run_summary
    from kdcli.stages import train

    with ProgressBar(f"{cfg.stage} {cfg.out}", quiet) as bar:
        result = train.run(cfg, callbacks=bar)
    if result.skipped:
        err_console.print(f"{cfg.out}: already complete, skipped (--overwrite to redo)")
        return
    if not quiet:
        console.print(run_summary(title, {**result.run, "dir": str(result.run_dir)}))


@app.command("train-teacher")
def train_teacher(
    out: o.Out,
    dataset: o.Dataset = None,
    dataset_arg: o.DatasetArg = None,
    data_dir: o.DataDir = None,
    model: o.Model = None,
    model_arg: o.ModelArg = None,
    seed: o.Seed = 0,
    epochs: o.Epochs = 30,
    steps: o.Steps = None,
    batch_size: o.BatchSize = 128,
    optimizer: o.Optimizer = "adamw",
    lr: o.Lr = 1e-3,
    momentum: o.Momentum = 0.9,
    weight_decay: o.WeightDecay = 0.0,
    schedule: o.Schedule = "cosine",
    warmup_epochs: o.WarmupEpochs = 0.0,
    label_smoothing: o.LabelSmoothing = 0.0,
    grad_clip: o.GradClip = None,
    augment: o.Augment = False,
    eval_every: o.EvalEvery = 1,
    device: o.Device = "auto",
    threads: o.Threads = None,
    overwrite: o.Overwrite = False,
    resume: o.Resume = False,
    quiet: o.Quiet = False,
) -> None:
    """Train a teacher on the dataset's whole train split (its pool of n_T samples)."""
    cfg = _train_config("train-teacher", **locals())
    _run(cfg, quiet, "teacher")


@app.command("train-labels")
def train_labels(
    out: o.Out,
    teacher: Annotated[Optional[str], typer.Option(
        help="Teacher run dir: dataset, pool and n_T (and by default the model) come from it.")] = None,
    kappa: Annotated[float, typer.Option(help="Fraction of the teacher's n_T to train on (>1: fresh samples).")] = 1.0,
    subset_seed: Annotated[int, typer.Option(help="Seed of the nested, stratified κ subset order.")] = 0,
    dataset: o.Dataset = None,
    dataset_arg: o.DatasetArg = None,
    data_dir: o.DataDir = None,
    model: o.Model = None,
    model_arg: o.ModelArg = None,
    seed: o.Seed = 0,
    epochs: o.Epochs = 30,
    steps: o.Steps = None,
    batch_size: o.BatchSize = 128,
    optimizer: o.Optimizer = "adamw",
    lr: o.Lr = 1e-3,
    momentum: o.Momentum = 0.9,
    weight_decay: o.WeightDecay = 0.0,
    schedule: o.Schedule = "cosine",
    warmup_epochs: o.WarmupEpochs = 0.0,
    label_smoothing: o.LabelSmoothing = 0.0,
    grad_clip: o.GradClip = None,
    augment: o.Augment = False,
    eval_every: o.EvalEvery = 1,
    device: o.Device = "auto",
    threads: o.Threads = None,
    overwrite: o.Overwrite = False,
    resume: o.Resume = False,
    quiet: o.Quiet = False,
) -> None:
    """Train a student on hard labels from a κ subset (the baseline a distilled student is paired with)."""
    cfg = _train_config("train-labels", **locals())
    _run(cfg, quiet, "label-trained student")
