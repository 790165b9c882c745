"""The training commands (train-teacher, train-labels, distill) and dump-logits: thin layers
over kdcli.stages, their options built from the configs (kdcli/config.py)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import typer

from kdcli.cli import build
from kdcli.cli import options as o
from kdcli.cli.main import app
from kdcli.errors import ConfigError, KdcliError, Stopped

TITLES = {"train-teacher": "teacher", "train-labels": "label-trained student", "distill": "distilled student"}


def _config_class(stage: str):
    from kdcli.config import DistillConfig, TrainConfig

    return DistillConfig if stage == "distill" else TrainConfig


def train_configs(stage: str, values: dict) -> list:
    """The configs a training command runs: one, or a config per grid point asked for."""
    cls = _config_class(stage)
    cfg = cls(stage=stage, **build.config_values(cls, values, stage))
    if not values["grid"]:
        if any(values[k] is not None for k in ("task_index", "task_block", "point_dir")):
            raise ConfigError("--task-index, --task-block and --point-dir choose points of a --grid; "
                              "give --grid")
        return [cfg]
    from kdcli.sweep import grid_configs

    return grid_configs(cfg, values["grid"], values["task_index"], values["task_block"], values["point_dir"])


def _train(stage: str, **values) -> None:
    if values["print_grid"]:
        from kdcli.sweep import grid_size, parse_grid

        size = grid_size(parse_grid(values["grid"] or [], _config_class(stage), stage))
        block = values["task_block"]
        if block is not None and block < 1:
            raise ConfigError(f"--task-block {block}: expected a positive number of points per task")
        typer.echo(size if block is None else math.ceil(size / block))
        raise typer.Exit()
    configs = train_configs(stage, values)
    if values["workers"] < 1:
        raise ConfigError(f"--workers {values['workers']}: expected at least 1")
    from kdcli.train import distributed

    if distributed.launched():
        _run_distributed(stage, configs, values)
        return
    if values["stack_seeds"]:
        _stacked(stage, configs, values)
        return
    if values["workers"] > 1:
        from kdcli.cli.workers import run_workers

        run_workers(stage, configs, values["workers"], values["quiet"])
        return
    if len(configs) == 1:
        _run(stage, configs[0], values["quiet"])
        return
    from kdcli.cli.main import print_error
    from kdcli.io.shared import sharing
    from kdcli.sweep import point_error, points_failed
    from kdcli.train.signals import StopOnSignal

    failed = []
    with sharing(), StopOnSignal() as stop:  # the dataset, logits, their checks: once for every point
        for done, cfg in enumerate(configs):  # one after another: Python and torch start up once
            if stop.signum is not None:
                raise Stopped(f"{stop.name} between points: {done} of {len(configs)} points done, "
                              "none interrupted; run the same command again to continue", stop.signum)
            try:
                _run(stage, cfg, values["quiet"])
            except Stopped:
                raise  # a signal stops the sweep (the running point saved a checkpoint)
            except (KdcliError, OSError) as exc:
                print_error("Error", point_error(cfg, exc))
                failed.append(Path(cfg.out).name)
    if failed:
        raise points_failed(failed, len(configs))


def _run_distributed(stage: str, configs: list, values: dict) -> None:
    """One run over the processes torchrun started (DDP): rank 0 writes and prints."""
    from kdcli.train import distributed

    if len(configs) > 1 or values["workers"] > 1 or values["stack_seeds"]:
        raise ConfigError("torchrun: one run spans the processes it starts; give one point (no --task-index "
                          "list, --workers or --stack-seeds); fan many runs out as a slurm array instead")
    cfg = configs[0]
    size = int(os.environ["WORLD_SIZE"])
    if cfg.batch_size % size:
        raise ConfigError(f"--batch-size {cfg.batch_size}: not divisible by the {size} processes torchrun "
                          "started (each takes an equal slice of the global batch)")
    world = distributed.start(cfg.device)
    _run(stage, cfg, values["quiet"] or not world.main, say=world.main)
    distributed.stop()  # after an error torchrun ends the other processes


def _stacked(stage: str, configs: list, values: dict) -> None:
    """--stack-seeds: each group of points that differ only in their seed, as one stack."""
    from kdcli.cli.display import ProgressBar, console, err_console, one_line, skipped_line
    from kdcli.cli.main import print_error
    from kdcli.io.shared import sharing
    from kdcli.stages import stacked
    from kdcli.sweep import points_failed

    if not any(item.partition("=")[0].strip() == "seed" for item in values["grid"] or []):
        raise ConfigError("--stack-seeds: stacks the seeds of a point; give them with --grid seed=0,1,…")
    if values["workers"] > 1:
        raise ConfigError("--stack-seeds: trains each stack in this process; drop --workers")
    groups: dict = {}
    for cfg in configs:
        key = repr(sorted((k, v) for k, v in cfg.to_dict().items() if k not in ("seed", "out")))
        groups.setdefault(key, []).append(cfg)
    failed = []
    with sharing():
        for group in groups.values():
            started = time.perf_counter()
            try:
                with ProgressBar(f"{stage} {len(group)} seeds stacked", values["quiet"]) as bar:
                    results = stacked.run(stage, group, progress=bar)
            except Stopped:
                raise
            except (KdcliError, OSError) as exc:
                if len(groups) == 1:
                    raise
                print_error("Error", f"{', '.join(str(c.out) for c in group)}: {exc}")
                failed.extend(Path(c.out).name for c in group)
                continue
            seconds = time.perf_counter() - started
            for cfg, result in zip(group, results):
                if result.skipped:
                    err_console.print(skipped_line(cfg.out))
                else:
                    console.print(one_line(result.run, cfg.out, seconds) + f" (stack of {len(group)})",
                                  highlight=False)
    if failed:
        raise points_failed(failed, len(configs))


def _run(stage: str, cfg, quiet: bool, say: bool = True) -> None:
    from kdcli.cli.display import (
        ProgressBar,
        console,
        err_console,
        one_line,
        run_summary,
        skipped_line,
    )
    from kdcli.stages import distill, train

    stage_module = distill if stage == "distill" else train
    started = time.perf_counter()
    with ProgressBar(f"{stage} {cfg.out}", quiet) as bar:
        result = stage_module.run(cfg, progress=bar)
    if not say:  # a torchrun process other than rank 0
        return
    if result.skipped:
        err_console.print(skipped_line(cfg.out))
    elif quiet:  # one line per run, for logs: the point, its result, the seconds
        console.print(one_line(result.run, cfg.out, time.perf_counter() - started), highlight=False)
    else:
        console.print(run_summary(TITLES[stage], {**result.run, "dir": str(result.run_dir)}))


DOCS = {
    "train-teacher": "Train a teacher on the dataset's whole train split (its pool of n_T samples).",
    "train-labels": "Train a student on hard labels from a κ subset (the baseline a distilled student "
                    "is paired with).",
    "distill": "Train a student on a teacher's soft labels: α·τ²·KL(t/τ ‖ s/τ) + (1−α)·CE, on a κ subset.",
}


def _register_training(stage: str) -> None:
    # Building the options needs the config classes, but not torch: kdcli.config imports none.
    params = build.option_parameters(_config_class(stage), stage) + [o.QUIET, *o.SWEEP]
    build.register(app, stage, lambda **values: _train(stage, **values), params, DOCS[stage])


for _stage in DOCS:
    _register_training(_stage)


def _dump(**values) -> None:
    from kdcli.cli.display import ProgressBar, console, err_console
    from kdcli.config import DumpConfig
    from kdcli.stages import dump_logits

    cfg = DumpConfig(**build.config_values(DumpConfig, values))
    with ProgressBar(f"dump-logits {cfg.out}", values["quiet"]) as bar:
        result = dump_logits.run(cfg, progress=bar)
    if result.skipped:
        err_console.print(f"{cfg.out}: already holds this teacher's logits, skipped (--overwrite to redo)")
    elif not values["quiet"]:
        rows = ", ".join(f"{n} {split}" for split, n in result.rows.items())
        console.print(f"wrote {cfg.out}: {rows} rows, {result.metadata['dataset']['num_classes']} classes, "
                      f"{cfg.dtype}" + (f", top-{cfg.topk}" if cfg.topk else ""))


def _register_dump() -> None:
    from kdcli.config import DumpConfig

    build.register(app, "dump-logits", _dump, build.option_parameters(DumpConfig) + [o.QUIET],
                   "Write a teacher's raw logits for its pool and the test split to Parquet.")


_register_dump()
