"""`cka`: centered kernel alignment between two runs' representations of the same inputs.

Both runs' models see the same samples of their (identical) dataset; forward hooks
(kdcli/models/layers.py) take the chosen layers' outputs, one feature vector per row,
batch by batch, under inference_mode. The full-data estimators (linear, rbf, debiased)
keep the features in memory as float32; the minibatch estimator alone streams them
(constant memory). The samples are a seeded permutation of the split (the first
--max-samples of it), so minibatches are random draws even when a split is stored
sorted by class. Output: kdcli/io/cka.py.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kdcli.config import CKAConfig, DistillConfig, fields_with_role
from kdcli.errors import ArtifactError, ConfigError, DataError
from kdcli.io import runs
from kdcli.io.cka import CKA_FORMAT_VERSION, COLUMNS, read_cka, write_cka
from kdcli.io.hashing import sha256_array
from kdcli.io.provenance import now_iso, provenance
from kdcli.io.tables import kept_output
from kdcli.metrics import cka as M
from kdcli.metrics.bootstrap import CONFIDENCE, basic_interval
from kdcli.models.layers import Layer, LayerHooks, list_layers, resolve_layers
from kdcli.progress import Progress
from kdcli.task import Task

FULL_DATA = {"linear": ("linear", False), "debiased": ("linear", True), "rbf": ("rbf", False)}


@dataclass
class CKAResult:
    path: Path
    skipped: bool  # --out already held this result; nothing was computed
    rows: list[dict]
    layers_a: list[str]
    layers_b: list[str]
    metadata: dict


def layers(run_dir: str, device: str = "cpu", data_dir: str | None = None) -> tuple[dict, list[Layer]]:
    """The run (run.json) and its model's layers (`kdcli cka --list-layers`), probed with two
    test samples of the run's dataset."""
    run = runs.read_run(run_dir, flag="RUN")
    dataset = _dataset(run, data_dir, f"RUN {run['dir']}")
    model = load_run_model(run, "RUN", torch.device(device))
    x = dataset.model_input(dataset.test().x[:2].to(device))
    return run, list_layers(model, x, Task.of_run(run))


def run(cfg: CKAConfig, progress: Progress | None = None) -> CKAResult:
    """Compute every requested (layer_a, layer_b, estimator) and write the Parquet file."""
    from kdcli.train.device import use_device

    progress = progress or Progress()
    started = now_iso()
    run_a = runs.read_run(cfg.run_a, flag="RUN_A")
    run_b = runs.read_run(cfg.run_b, flag="RUN_B")
    _check_same_dataset(run_a, run_b)
    settings = {**cfg.settings(), "run_a_model_sha256": run_a["artifacts"][runs.MODEL_FILE],
                "run_b_model_sha256": run_b["artifacts"][runs.MODEL_FILE]}
    previous = _previous_result(cfg, settings)
    if previous is not None:
        return previous

    where = f"--data-dir {cfg.data_dir}" if cfg.data_dir else f"RUN_A {run_a['dir']}"
    dataset = _dataset(run_a, cfg.data_dir, where)
    task = Task.of_run(run_a)  # what run.json says
    split, positions = _samples(cfg, dataset)
    device = use_device(cfg.device, cfg.threads)
    model_a = load_run_model(run_a, "RUN_A", device)
    model_b = load_run_model(run_b, "RUN_B", device)
    layers_a = resolve_layers(model_a, cfg.layers_a, "--layers-a", "RUN_A")
    layers_b = resolve_layers(model_b, cfg.layers_b, "--layers-b", "RUN_B")

    total = -(-len(positions) // cfg.batch_size) + cfg.bootstrap  # batches, then resamples
    progress.start(total)
    step = progress.advance
    with LayerHooks(model_a, layers_a, task, flag="--layers-a", label="RUN_A") as hooks_a, \
            LayerHooks(model_b, layers_b, task, flag="--layers-b", label="RUN_B") as hooks_b:
        feats_a, feats_b, dims, minibatch = _extract(cfg, hooks_a, hooks_b, split, positions,
                                                     dataset.model_input, device, step)
    del model_a, model_b
    rows = _estimates(cfg, feats_a, feats_b, minibatch, layers_a, layers_b, dims, step)
    progress.advance(total)  # the minibatch bootstrap takes no time

    metadata = _metadata(cfg, settings, run_a, run_b, dataset, split, positions, started)
    write_cka(cfg.out, rows, metadata)
    return CKAResult(Path(cfg.out), False, rows, layers_a, layers_b, metadata)


def _samples(cfg: CKAConfig, dataset):
    """The split and a seeded random order of it (its first --max-samples)."""
    split = dataset.split(cfg.split)
    positions = torch.randperm(len(split), generator=torch.Generator().manual_seed(cfg.seed))
    positions = positions[:cfg.max_samples] if cfg.max_samples else positions
    n = len(positions)
    M.check_n(n, bool({"debiased", "minibatch"} & set(cfg.estimators)), f"--split {cfg.split}: n")
    usable = n // cfg.batch_size + (n % cfg.batch_size >= 4)
    if "minibatch" in cfg.estimators and cfg.bootstrap and usable < 2:
        raise ConfigError(f"--bootstrap with the minibatch estimator resamples its batches, and "
                          f"{n} samples make {usable}; lower --batch-size")
    return split, positions


def _estimates(cfg: CKAConfig, feats_a: list, feats_b: list, minibatch: M.MinibatchCKA | None,
               layers_a: list[str], layers_b: list[str], dims: tuple, step: Callable) -> list[dict]:
    """The output rows, in the order of --estimator, then layer_a, then layer_b."""
    rows = []
    rng = np.random.default_rng(cfg.seed)
    full = [e for e in cfg.estimators if e in FULL_DATA]
    if full:
        n = len(feats_a[0])
        values = _full_data(cfg, full, feats_a, feats_b, layers_a, layers_b, rng, step)
        for e in full:
            rows += _rows(e, values[e], layers_a, layers_b, dims, n, None)
    if minibatch is not None:
        values = _minibatch(cfg, minibatch, rng)
        rows += _rows("minibatch", values, layers_a, layers_b, dims, minibatch.n, minibatch.batches)
    return sorted(rows, key=lambda r: cfg.estimators.index(r["estimator"]))


def _check_same_dataset(run_a: dict, run_b: dict) -> None:
    a, b = run_a["dataset"], run_b["dataset"]
    if a["fingerprint"] != b["fingerprint"]:
        raise ArtifactError(
            f"RUN_B {run_b['dir']}: trained on dataset {b['name']} {b['args']} (fingerprint "
            f"{b['fingerprint'][:12]}), RUN_A on {a['name']} {a['args']} (fingerprint {a['fingerprint'][:12]}); "
            "CKA compares two models on the same inputs, so both runs need the same dataset")


def _dataset(run: dict, data_dir: str | None, where: str):
    from kdcli.data import dataset_from_description

    return dataset_from_description(run["dataset"], data_dir, where)


def load_run_model(run: dict, label: str, device: torch.device) -> torch.nn.Module:
    from kdcli.io.checkpoint import load_model

    model, info = load_model(Path(run["dir"]) / runs.MODEL_FILE, device)
    if info["dataset_fingerprint"] != run["dataset"]["fingerprint"]:
        raise ArtifactError(f"{label} {run['dir']}: the checkpoint's dataset fingerprint differs "
                            "from run.json's (the weights belong to another run)")
    return model.eval().requires_grad_(False)


def _extract(cfg: CKAConfig, hooks_a: LayerHooks, hooks_b: LayerHooks, split, positions: torch.Tensor,
             model_input, device: torch.device, step: Callable):
    """Run both models batch by batch. Full-data estimators: features (one vector per row)
    into preallocated float32 buffers. Minibatch estimator: each batch's features go to the
    accumulator and are dropped."""
    keep = any(e in FULL_DATA for e in cfg.estimators)
    task = hooks_a.task
    minibatch = None
    if "minibatch" in cfg.estimators:
        minibatch = M.MinibatchCKA([f"RUN_A layer {n!r}" for n in hooks_a.names],
                                   [f"RUN_B layer {n!r}" for n in hooks_b.names])
    n = len(positions)
    mask = task.mask(split.y[positions])  # rows whose target counts (None: every row)
    n_rows = split.y[positions].numel() if mask is None else int(mask.sum())
    feats: tuple[dict, dict] = ({}, {})
    dims: tuple[dict, dict] = ({}, {})
    done = 0  # rows stored so far
    with torch.inference_mode():
        for start in range(0, n, cfg.batch_size):
            pos = positions[start:start + cfg.batch_size]
            x = model_input(split.x[pos].to(device))
            outs = (hooks_a.forward(x), hooks_b.forward(x))
            keep_rows = task.mask(split.y[pos].to(device))
            if keep_rows is not None:
                outs = tuple({k: f[keep_rows] for k, f in out.items()} for out in outs)
            rows = next(iter(outs[0].values())).shape[0]
            for side, (label, out) in enumerate(zip(("RUN_A", "RUN_B"), outs)):
                for name, f in out.items():
                    if not bool(torch.isfinite(f).all()):
                        raise DataError(f"{label} {(cfg.run_a, cfg.run_b)[side]}: layer {name!r} gives NaN "
                                        f"or inf features on the {cfg.split} split (in samples "
                                        f"{start}–{start + len(pos) - 1} of the CKA order); check the "
                                        "run's weights (a diverged run) and the data")
                    dims[side][name] = f.shape[1]
                    if keep:
                        if name not in feats[side]:
                            feats[side][name] = _buffer(n_rows, f.shape[1], device)
                        feats[side][name][done:done + rows] = f
            done += rows
            if minibatch is not None and rows >= 4:  # a last batch under 4 rows cannot be used
                minibatch.update(list(outs[0].values()), list(outs[1].values()))
            step()
    return (list(feats[0].values()), list(feats[1].values()),
            ([dims[0][k] for k in hooks_a.names], [dims[1][k] for k in hooks_b.names]), minibatch)


def _buffer(n: int, d: int, device: torch.device) -> torch.Tensor:
    """All n rows' features of one layer (full-data estimators only)."""
    return torch.empty(n, d, dtype=torch.float32, device=device)


def _kernels(kind: str, feats: list[torch.Tensor], sigma: float, resample: bool) -> list:
    out = []
    for f in feats:
        x = M.centred_features(f)
        out.append(M.LinearKernel.from_features(x) if kind == "linear"
                   else M.RBFKernel.from_features(x, sigma, debiased=False, keep_distances=resample))
    return out


def _matrix(ka: list, kb: list, debiased: bool, layers_a: list[str], layers_b: list[str]) -> np.ndarray:
    return np.array([[M.cka(a, b, debiased, (f"RUN_A layer {la!r}", f"RUN_B layer {lb!r}"))
                      for b, lb in zip(kb, layers_b)] for a, la in zip(ka, layers_a)])


def _full_data(cfg: CKAConfig, estimators: list[str], feats_a: list, feats_b: list,
               layers_a: list[str], layers_b: list[str], rng: np.random.Generator, step: Callable):
    """{estimator: (values [La, Lb], bootstrap replicates [B, La, Lb] or None, reference [La, Lb])}.

    Each kind of kernel is built once per layer (linear and debiased share theirs), and the
    float32 features are dropped once they are. The bootstrap draws the same sample indices
    for every estimator and layer pair. The reference is the plug-in value, the CKA of the
    bootstrap world's population (the empirical distribution): the biased estimate.
    """
    kinds = list(dict.fromkeys(FULL_DATA[e][0] for e in estimators))
    kernels = {kind: (_kernels(kind, feats_a, cfg.rbf_sigma, cfg.bootstrap > 0),
                      _kernels(kind, feats_b, cfg.rbf_sigma, cfg.bootstrap > 0)) for kind in kinds}
    feats_a.clear()
    feats_b.clear()
    point = {e: _matrix(*kernels[FULL_DATA[e][0]], FULL_DATA[e][1], layers_a, layers_b) for e in estimators}
    reference = {e: point[e] if not FULL_DATA[e][1] else
                 _matrix(*kernels[FULL_DATA[e][0]], False, layers_a, layers_b) for e in estimators}
    boot: dict[str, list[np.ndarray]] = {e: [] for e in estimators}
    n = kernels[kinds[0]][0][0].n
    for _ in range(cfg.bootstrap):
        idx = torch.from_numpy(rng.integers(0, n, n))
        taken = {kind: tuple([k.take(idx.to(_device_of(k))) for k in side] for side in kernels[kind])
                 for kind in kinds}
        for e in estimators:
            kind, debiased = FULL_DATA[e]
            boot[e].append(_matrix(*taken[kind], debiased, layers_a, layers_b))
        del taken
        step()
    return {e: (point[e], np.stack(boot[e]) if boot[e] else None, reference[e]) for e in estimators}


def _device_of(kernel) -> torch.device:
    for t in (getattr(kernel, "x", None), getattr(kernel, "gram", None), getattr(kernel, "sqdist", None)):
        if t is not None:
            return t.device
    return torch.device("cpu")


def _minibatch(cfg: CKAConfig, acc: M.MinibatchCKA, rng: np.random.Generator):
    """Values, and a bootstrap over batches (each batch is a random draw of the samples)."""
    point = acc.matrix()
    boot = [acc.matrix(rng.integers(0, acc.batches, acc.batches)) for _ in range(cfg.bootstrap)]
    return point, (np.stack(boot) if boot else None), point


def _rows(estimator: str, values: tuple, layers_a: list[str], layers_b: list[str], dims: tuple,
          n: int, batches: int | None) -> list[dict]:
    point, boot, reference = values
    lo = hi = None
    if boot is not None:
        lo, hi = basic_interval(point, boot, reference)
    return [{"layer_a": la, "layer_b": lb, "estimator": estimator, "value": float(point[i, j]),
             "ci_low": None if lo is None else float(lo[i, j]),
             "ci_high": None if hi is None else float(hi[i, j]),
             "n": int(n), "d_a": int(dims[0][i]), "d_b": int(dims[1][j]), "batches": batches}
            for i, la in enumerate(layers_a) for j, lb in enumerate(layers_b)]


def _run_record(run: dict) -> dict:
    cfg = run.get("config", {})
    return {"run_id": run["run_id"], "dir": run["dir"], "stage": run.get("stage"),
            "model_sha256": run["artifacts"][runs.MODEL_FILE], "model_name": run["model"]["name"],
            "model_args": run["model"]["args"],
            "config": {k: cfg[k] for k in fields_with_role(DistillConfig, "training", "arm") if k in cfg},
            "teacher": run.get("teacher")}


def _metadata(cfg: CKAConfig, settings: dict, run_a: dict, run_b: dict, dataset, split,
              positions: torch.Tensor, started: str) -> dict:
    a, b = _run_record(run_a), _run_record(run_b)
    return {
        "format": "kdcli-cka",
        "format_version": CKA_FORMAT_VERSION,
        "dataset_fingerprint": dataset.fingerprint,
        "dataset": dataset.describe(),
        "run_a_id": a["run_id"], "run_b_id": b["run_id"],
        "run_a_model_sha256": a["model_sha256"], "run_b_model_sha256": b["model_sha256"],
        "run_a": a, "run_b": b,
        "split": cfg.split,
        "n": len(positions),
        "samples_sha256": sha256_array(split.index[positions].numpy()),
        "estimators": list(cfg.estimators),
        "rbf_sigma": cfg.rbf_sigma,
        "rbf_bandwidth": "rbf_sigma × sqrt(median of the n² squared pairwise distances, diagonal "
                         "included), as in Kornblith et al. (2019)'s reference notebook",
        "batch_size": cfg.batch_size,
        "bootstrap": cfg.bootstrap,
        "confidence": CONFIDENCE,
        "ci_method": "basic (reflected) bootstrap, reference = plug-in (biased) CKA; resampling "
                     "samples (linear, debiased, rbf) or batches (minibatch)",
        "seed": cfg.seed,
        "settings": settings,
        "columns": {k: v[1] for k, v in COLUMNS.items()},
        "provenance": provenance(started=started, seeds={"seed": cfg.seed},
                                 inputs={"run_a_model": a["model_sha256"], "run_b_model": b["model_sha256"]}),
    }


def _previous_result(cfg: CKAConfig, settings: dict) -> CKAResult | None:
    """An existing --out computed with the same runs and settings is kept (a re-run array task);
    anything else there is refused unless --overwrite."""
    kept = kept_output(cfg.out, cfg.overwrite, settings, read_cka, "CKA", "CKA")
    if kept is None:
        return None
    rows, meta = kept
    return CKAResult(Path(cfg.out), True, rows, list(dict.fromkeys(r["layer_a"] for r in rows)),
                     list(dict.fromkeys(r["layer_b"] for r in rows)), meta)
