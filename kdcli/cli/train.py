"""The training commands (train-teacher, train-labels, distill) and dump-logits: thin
layers over kdcli.stages."""

from __future__ import annotations

import inspect
from typing import Annotated

import typer

from kdcli.cli import options as o
from kdcli.cli.main import app

KD_BACKEND = Annotated[str, typer.Option(help="KD loss backend: auto (triton on CUDA, fused on CPU, else eager), eager, fused or triton.")]


def _train_config(stage: str, **kw):
    from kdcli.config import DistillConfig, TrainConfig

    kw["dataset_args"] = o.parse_kv(kw.pop("dataset_arg"), "--dataset-arg")
    kw["model_args"] = o.parse_kv(kw.pop("model_arg"), "--model-arg")
    kw.pop("quiet")
    grid, index, print_grid = kw.pop("grid"), kw.pop("task_index"), kw.pop("print_grid")
    cfg = (DistillConfig if stage == "distill" else TrainConfig)(stage=stage, **kw)
    if print_grid:
        from kdcli.sweep import grid_size, parse_grid

        typer.echo(grid_size(parse_grid(grid or [], type(cfg))))
        raise typer.Exit()
    if grid:
        from kdcli.sweep import apply_point

        cfg = apply_point(cfg, grid, index)
    return cfg


def _run(cfg, quiet: bool, title: str) -> None:
    from kdcli.cli.display import ProgressBar, console, err_console, run_summary
    from kdcli.stages import distill, train

    stage = distill if cfg.stage == "distill" else train
    with ProgressBar(f"{cfg.stage} {cfg.out}", quiet) as bar:
        result = stage.run(cfg, callbacks=bar)
    if result.skipped:
        err_console.print(f"{cfg.out}: already complete, skipped (--overwrite to redo)")
        return
    if not quiet:
        console.print(run_summary(title, {**result.run, "dir": str(result.run_dir)}))


# The options every training stage shares, declared once: (name, annotation, default).
# Each command below prepends its own; the signature typer reads is built from both.
TRAINING_OPTIONS = [
    ("dataset", o.Dataset, None), ("dataset_arg", o.DatasetArg, None), ("data_dir", o.DataDir, None),
    ("model", o.Model, None), ("model_arg", o.ModelArg, None), ("seed", o.Seed, 0),
    ("epochs", o.Epochs, 30), ("steps", o.Steps, None), ("batch_size", o.BatchSize, 128),
    ("optimizer", o.Optimizer, "adamw"), ("lr", o.Lr, 1e-3), ("momentum", o.Momentum, 0.9),
    ("weight_decay", o.WeightDecay, 0.0), ("schedule", o.Schedule, "cosine"),
    ("warmup_epochs", o.WarmupEpochs, 0.0), ("label_smoothing", o.LabelSmoothing, 0.0),
    ("grad_clip", o.GradClip, None), ("augment", o.Augment, False), ("eval_every", o.EvalEvery, 1),
    ("device", o.Device, "auto"), ("threads", o.Threads, None), ("overwrite", o.Overwrite, False),
    ("resume", o.Resume, False), ("quiet", o.Quiet, False), ("grid", o.Grid, None),
    ("task_index", o.TaskIndex, None), ("print_grid", o.PrintGrid, False),
]
STUDENT_OPTIONS = [
    ("kappa", o.Kappa, 1.0), ("subset_seed", o.SubsetSeed, 0),
]


def _training_command(name: str, stage: str, title: str, own: list[tuple], doc: str) -> None:
    """Register `kdcli NAME` with its own options followed by TRAINING_OPTIONS."""

    def command(**kw) -> None:
        quiet = kw["quiet"]
        _run(_train_config(stage, **kw), quiet, title)

    params = [inspect.Parameter("out", inspect.Parameter.KEYWORD_ONLY, annotation=o.Out)]
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=d, annotation=a)
               for n, a, d in own + TRAINING_OPTIONS]
    command.__signature__ = inspect.Signature(params)
    command.__name__ = name.replace("-", "_")
    command.__doc__ = doc
    app.command(name)(command)


_training_command(
    "train-teacher", "train-teacher", "teacher", [],
    "Train a teacher on the dataset's whole train split (its pool of n_T samples).")

_training_command(
    "train-labels", "train-labels", "label-trained student",
    [("teacher", o.Teacher, None), ("logits", o.Logits, None), *STUDENT_OPTIONS,
     ("match_smoothing_tau", Annotated[float | None, typer.Option(
         help="Label-smoothing control: ε = the teacher's mean non-target mass at this τ on the "
              "subset.")], None)],
    "Train a student on hard labels from a κ subset (the baseline a distilled student is paired with).")

_training_command(
    "distill", "distill", "distilled student",
    [("logits", o.Logits, None),
     ("teacher", Annotated[str | None, typer.Option(
         help="Teacher run dir. Alone: online distillation (teacher forward per batch, needed with "
              "--augment); with --logits: checked against the file.")], None),
     *STUDENT_OPTIONS,
     ("tau", Annotated[float, typer.Option(help="Temperature τ of both softmaxes in the KL term.")], 4.0),
     ("alpha", Annotated[float, typer.Option(help="Weight of the KD term; 1 - alpha weighs hard-label CE.")], 1.0),
     ("kd_backend", KD_BACKEND, "auto")],
    "Train a student on a teacher's soft labels: α·τ²·KL(t/τ ‖ s/τ) + (1−α)·CE, on a κ subset.")


@app.command("dump-logits")
def dump_logits_cmd(
    teacher: Annotated[str, typer.Option(help="Teacher run dir.")],
    out: Annotated[str, typer.Option("--out", "-o", help="Logits file to write (.parquet).")],
    dtype: Annotated[str, typer.Option(help="Stored precision: float16 or float32.")] = "float32",
    topk: Annotated[int | None, typer.Option(
        help="Store only the K largest logits, their ids and the row's log-sum-exp.")] = None,
    extra_train: Annotated[int, typer.Option(
        help="Also dump N fresh train samples after the pool (for students with κ > 1).")] = 0,
    data_dir: o.DataDir = None,
    batch_size: Annotated[int, typer.Option(help="Inference batch size.")] = 2048,
    device: o.Device = "auto",
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing file.")] = False,
    quiet: o.Quiet = False,
) -> None:
    """Write a teacher's raw logits for its pool and the test split to Parquet."""
    from kdcli.cli.display import ProgressBar, console, err_console
    from kdcli.config import DumpConfig
    from kdcli.stages import dump_logits

    cfg = DumpConfig(teacher=teacher, out=out, dtype=dtype, topk=topk, extra_train=extra_train,
                     data_dir=data_dir, batch_size=batch_size, device=device, overwrite=overwrite)
    with ProgressBar(f"dump-logits {out}", quiet) as bar:
        result = dump_logits.run(cfg, on_start=lambda n: bar.on_start(n, 0),
                                 on_batch=lambda: bar.on_step(None))
    if result.skipped:
        err_console.print(f"{out}: already holds this teacher's logits, skipped (--overwrite to redo)")
    elif not quiet:
        rows = ", ".join(f"{n} {split}" for split, n in result.rows.items())
        console.print(f"wrote {out}: {rows} rows, {result.metadata['dataset']['num_classes']} classes, {dtype}"
                      + (f", top-{topk}" if topk else ""))
