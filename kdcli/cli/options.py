"""Options shared by several commands, declared once."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from kdcli.errors import ConfigError

Out = Annotated[str, typer.Option("--out", "-o", help="Run directory to create.")]
Dataset = Annotated[str | None, typer.Option(
    help="Dataset: mnist1d (default, generated offline), digits, cifar10, cifar100, parquet-images.")]
DatasetArg = Annotated[list[str] | None, typer.Option(
    "--dataset-arg", help="Dataset argument KEY=VALUE (repeatable), e.g. n_train=40000.")]
DataDir = Annotated[str | None, typer.Option(help="Folder holding the dataset's files (never downloaded).")]
Model = Annotated[str | None, typer.Option(
    help="Model: mlp, cnn1d, cnn, resnet20, resnet56, resnet_cifar, test_*, or tv:NAME (torchvision).")]
ModelArg = Annotated[list[str] | None, typer.Option(
    "--model-arg", help="Model argument KEY=VALUE (repeatable), e.g. channels=64.")]
Seed = Annotated[int, typer.Option(help="Seed of the initial weights, batch order and augmentation.")]
Epochs = Annotated[int | None, typer.Option(help="Epochs over the training set.")]
Steps = Annotated[int | None, typer.Option(help="Optimizer steps (overrides --epochs).")]
BatchSize = Annotated[int, typer.Option(help="Training batch size.")]
Optimizer = Annotated[str, typer.Option(help="sgd (Nesterov momentum) or adamw.")]
Lr = Annotated[float, typer.Option(help="Peak learning rate.")]
Momentum = Annotated[float, typer.Option(help="SGD momentum.")]
WeightDecay = Annotated[float, typer.Option(help="Weight decay.")]
Schedule = Annotated[str, typer.Option(help="cosine, step (×gamma at 50% and 75%) or constant.")]
WarmupEpochs = Annotated[float, typer.Option(help="Linear warm-up length in epochs.")]
LabelSmoothing = Annotated[float, typer.Option(help="Label smoothing ε of the cross-entropy.")]
GradClip = Annotated[float | None, typer.Option(help="Clip the gradient norm to this value.")]
Augment = Annotated[bool, typer.Option(
    "--augment/--no-augment", help="Random crop (padding 4) and horizontal flip; image datasets only.")]
EvalEvery = Annotated[int, typer.Option(help="Evaluate and checkpoint every N epochs (and after the last).")]
Device = Annotated[str, typer.Option(help="auto (CUDA when available), cpu, cuda or cuda:N.")]
Threads = Annotated[int | None, typer.Option(
    help="CPU threads; default $SLURM_CPUS_PER_TASK or all cores. Use 1 per run when running several side by side.")]
Overwrite = Annotated[bool, typer.Option("--overwrite", help="Redo a completed or interrupted run.")]
Resume = Annotated[bool, typer.Option("--resume", help="Continue an interrupted run from its last checkpoint.")]
Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bar or summary table.")]


def parse_kv(items: list[str] | None, flag: str) -> dict:
    """KEY=VALUE pairs; values are read as JSON when they parse (numbers, lists), else as text."""
    out = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"{flag} {item!r}: expected KEY=VALUE")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    return out
Teacher = Annotated[str | None, typer.Option(
    help="Teacher run dir: dataset, pool and n_T (and by default the student model) come from it.")]
Logits = Annotated[str | None, typer.Option(
    help="Teacher logits file from dump-logits (its metadata names the teacher and dataset).")]
Kappa = Annotated[float, typer.Option(help="Fraction of the teacher's n_T to train on (>1: fresh samples).")]
SubsetSeed = Annotated[int, typer.Option(help="Seed of the nested, stratified κ subset order.")]
Grid = Annotated[list[str] | None, typer.Option(
    "--grid", help="Sweep KEY=V1,V2,… (repeatable); runs one point of the Cartesian product in OUT/<point>.")]
TaskIndex = Annotated[int | None, typer.Option(
    help="Which grid point to run (0-based); default $SLURM_ARRAY_TASK_ID.")]
PrintGrid = Annotated[bool, typer.Option("--print-grid", help="Print the number of grid points and exit.")]
