"""`collapse`: neural collapse (NC1–NC4, kdcli/metrics/collapse.py) of completed runs'
penultimate features, per run and split.

A measurement of one model at a time, so a command of its own (not a mode of `cka`, which
compares two models on the same inputs, nor of training, which would pay a pass over the
training data in every run): it runs on any completed classification run, old ones included,
and many runs go into one file. The features are the default (penultimate) layer of
kdcli/models/layers.py, taken under inference_mode without augmentation; the last layer's
weights are the nn.Linear that reads them. Output: kdcli/io/collapse.py.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdcli.config import CollapseConfig
from kdcli.errors import ArtifactError, ConfigError, DataError
from kdcli.io import runs
from kdcli.io.collapse import COLLAPSE_FORMAT_VERSION, COLUMNS, read_collapse, write_collapse
from kdcli.io.provenance import now_iso, provenance
from kdcli.io.tables import kept_output
from kdcli.metrics.collapse import collapse
from kdcli.models.layers import LayerHooks, default_layer
from kdcli.progress import Progress
from kdcli.task import Task


@dataclass
class CollapseResult:
    path: Path
    skipped: bool  # --out already held this result; nothing was computed
    rows: list[dict]
    metadata: dict


def run(cfg: CollapseConfig, progress: Progress | None = None) -> CollapseResult:
    from kdcli.train.device import use_device

    progress = progress or Progress()
    started = now_iso()
    records = _read_runs(cfg.runs)
    settings = {**cfg.settings(), "runs": [[r["run_id"], r["artifacts"][runs.MODEL_FILE]] for r in records]}
    previous = _previous_result(cfg, settings)
    if previous is not None:
        return previous
    from kdcli.io.shared import sharing

    device = use_device(cfg.device, cfg.threads)
    progress.start(len(records) * len(cfg.splits))
    rows = []
    with sharing():  # runs on one dataset build (and fingerprint) it once
        for run in records:
            rows += _measure(cfg, run, device, progress.advance)
    metadata = {
        "format": "kdcli-collapse", "format_version": COLLAPSE_FORMAT_VERSION,
        "runs": [{"run_id": r["run_id"], "dir": r["dir"], "stage": r.get("stage"),
                  "model_sha256": r["artifacts"][runs.MODEL_FILE], "dataset_fingerprint": r["dataset"]["fingerprint"]}
                 for r in records],
        "splits": list(cfg.splits), "max_samples": cfg.max_samples, "seed": cfg.seed,
        "features": "the default (penultimate) layer, inference mode, no augmentation",
        "global_mean": "mean of the class means (class-balanced)",
        "settings": settings, "columns": {k: v[1] for k, v in COLUMNS.items()},
        "provenance": provenance(started=started, seeds={"seed": cfg.seed},
                                 inputs={r["run_id"]: r["artifacts"][runs.MODEL_FILE] for r in records}),
    }
    write_collapse(cfg.out, rows, metadata)
    return CollapseResult(Path(cfg.out), False, rows, metadata)


def _read_runs(dirs: tuple[str, ...]) -> list[dict]:
    records, seen = [], set()
    for d in dirs:
        run = runs.read_run(d, flag="RUN")
        if Task.of_run(run).kind != "classification":
            raise ConfigError(f"RUN {d}: a language model; collapse measures classifiers (one class mean per "
                              "class: a vocabulary's tokens are too many and too rare for that)")
        if run["run_id"] not in seen:  # one run named twice (two paths) is measured once
            seen.add(run["run_id"])
            records.append(run)
    return records


def _measure(cfg: CollapseConfig, run: dict, device: torch.device, step) -> list[dict]:
    from kdcli.data import dataset_from_description
    from kdcli.stages.cka import load_run_model

    where = f"RUN {run['dir']}"
    dataset = dataset_from_description(run["dataset"], cfg.data_dir, where)
    model = load_run_model(run, "RUN", device)
    layer = default_layer(model)
    weight = _last_layer(model, layer, where)
    rows = []
    for name in cfg.splits:
        split = _split(run, dataset, name, where)
        positions = torch.arange(len(split))
        if cfg.max_samples and cfg.max_samples < len(split):
            order = torch.randperm(len(split), generator=torch.Generator().manual_seed(cfg.seed))
            positions = order[:cfg.max_samples].sort().values
        feats, preds = _features(cfg, model, layer, Task.of_run(run), split, positions, dataset.model_input, device, where, name)
        if feats.shape[1] != weight.shape[1]:
            raise ConfigError(f"{where}: the penultimate layer {layer!r} gives {feats.shape[1]} features but the "
                              f"last layer reads {weight.shape[1]}; collapse needs the last layer to be a "
                              "Linear on the penultimate features")
        y = split.y[positions].numpy()
        if np.unique(y).size < 2:
            limit = f" (--max-samples {cfg.max_samples})" if cfg.max_samples else ""
            raise DataError(f"{where}: the {name} split's samples{limit} hold one class; neural collapse "
                            "compares classes, so it needs two or more")
        m = collapse(feats, y, weight, preds)
        rows.append({"run_id": run["run_id"], "run_dir": run["dir"], "split": name, **m,
                     "accuracy": float((preds == y).mean())})
        step()
    return rows


def _last_layer(model: torch.nn.Module, layer: str | None, where: str) -> np.ndarray:
    """The weights [C, d] of the nn.Linear reading the penultimate features."""
    modules = dict(model.named_modules())
    if layer == "features":
        head = modules.get("head")
    elif layer is not None:  # NAME:in of the last Linear (torchvision classifiers)
        head = modules.get(layer.partition(":")[0])
    else:
        head = None
    if not isinstance(head, torch.nn.Linear):
        raise ConfigError(f"{where}: the model's last layer is not an nn.Linear on its penultimate "
                          "features; collapse needs one (NC3 compares its weights with the class means)")
    return head.weight.detach().double().cpu().numpy()


def _split(run: dict, dataset, name: str, where: str):
    """The samples of --split NAME: the run's own κ subset (checked against run.json), the
    pool, or the test split."""
    from kdcli.data import kappa_subset

    if name != "seen":
        return dataset.split(name)
    subset = kappa_subset(dataset, run["subset"]["kappa"], run["subset"]["seed"])
    if subset.sha256 != run["subset"]["sha256"]:
        raise ArtifactError(f"{where}: the κ subset rebuilt from run.json is not the one the run trained on "
                            "(its sha256 differs); the data or kdcli's subset order changed")
    return subset.split


def _features(cfg, model, layer, task, split, positions, model_input, device, where, name):
    """Penultimate features [n, d] (float64) and the network's predictions [n]."""
    feats, preds = [], []
    with LayerHooks(model, [layer], task, flag="RUN", label=where, keep_output=True) as hooks, \
            torch.inference_mode():
        for start in range(0, len(positions), cfg.batch_size):
            pos = positions[start:start + cfg.batch_size]
            f = hooks.forward(model_input(split.x[pos].to(device)))[layer]
            if not bool(torch.isfinite(f).all()):
                raise DataError(f"{where}: NaN or inf penultimate features on the {name} split; check the "
                                "run's weights (a diverged run) and the data")
            feats.append(f.double().cpu())
            preds.append(hooks.output.argmax(dim=-1).cpu())
    return torch.cat(feats).numpy(), torch.cat(preds).numpy()


def _previous_result(cfg: CollapseConfig, settings: dict) -> CollapseResult | None:
    """An existing --out computed from the same runs and settings is kept (a re-run array task);
    anything else there is refused unless --overwrite."""
    kept = kept_output(cfg.out, cfg.overwrite, settings, read_collapse, "collapse", "the collapse")
    return None if kept is None else CollapseResult(Path(cfg.out), True, *kept)
