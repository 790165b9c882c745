"""The run-dir lifecycle of a training stage: decide (skip, fresh, resume), start, finish.

A completed run (run.json present) is skipped when it was made with the settings asked
for now, refused when made with others, redone with --overwrite. An interrupted run
resumes from its last checkpoint with --resume. run.json is written last: it is the
completion marker.
"""

from __future__ import annotations

import errno
import fcntl
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kdcli.config import TrainConfig, field_defaults
from kdcli.errors import ArtifactError
from kdcli.io import runs
from kdcli.io.atomic import clear_temporaries, write_json
from kdcli.io.checkpoint import save_model, save_tensors
from kdcli.io.hashing import sha256_file
from kdcli.io.predictions import predictions_meta
from kdcli.io.provenance import now_iso, provenance
from kdcli.io.tables import write_metrics, write_table
from kdcli.train.distributed import barrier, world
from kdcli.train.loop import PREDICTION_POSITIONS, PREDICTION_SEED
from kdcli.train.state import clear_state, saved_progress

ARTIFACTS = (runs.MODEL_FILE, runs.METRICS_FILE, runs.SUBSET_FILE, runs.PREDICTIONS_FILE)


@dataclass
class Plan:
    """A training run ready to start: what to do with --out (fresh or resume), its prepared
    inputs, objective and evaluation, the run.json fields of its stage, its attempts."""

    action: str
    p: object  # kdcli.stages.inputs.Prepared
    objective: object  # kdcli.losses.objective.Objective
    evaluator: object  # kdcli.train.loop.Evaluator
    info: dict
    attempts: list[dict]


@dataclass
class RunResult:
    run_dir: Path
    skipped: bool  # a completed run dir was found and left alone
    run: dict  # the run.json contents
    rows: list[dict] = field(default_factory=list)


def decide(cfg: TrainConfig) -> tuple[str, dict | None]:
    """What to do with --out, given the resolved settings: 'skip' (with the completed run's
    run.json), 'fresh' or 'resume'.

    new → fresh. complete (artifacts verified) → skip when made with these settings, refused
    when made with others. damaged → refused. in-progress with a checkpoint → resume with
    --resume, refused without. in-progress without one (killed before its first checkpoint)
    → fresh: there is nothing to keep. --overwrite makes anything kdcli made fresh; a foreign
    folder is always refused.
    """
    d = runs.inspect(cfg.out)
    out = f"--out {cfg.out}"
    if d.state == "foreign":
        raise ArtifactError(f"{out}: exists and is not a kdcli run directory; choose an empty or new "
                            "directory")
    if cfg.overwrite or d.state == "new":
        return "fresh", None
    if d.state == "damaged":
        raise ArtifactError(f"{d.why.removesuffix('.')}; --overwrite redoes the run")
    if d.state == "complete":
        _refuse_changes(cfg, d.run["config"], f"{out}: holds a completed run made with other settings",
                        "choose another --out or pass --overwrite")
        return "skip", d.run
    if not d.resumable:
        return "fresh", None
    if not cfg.resume:
        raise ArtifactError(f"{out}: holds an interrupted run; pass --resume to continue it or "
                            "--overwrite to start again")
    saved = saved_progress(Path(cfg.out))  # checked whole before anything runs
    size = world().size
    if saved.get("world_size", 1) != size:
        raise ArtifactError(f"--resume: {cfg.out} was checkpointed by a run over {saved.get('world_size', 1)} "
                            f"process(es), this one has {size}; resume it with the same number of torchrun "
                            "processes (a different world size sums gradients in another order), or --overwrite")
    _refuse_changes(cfg, saved.get("config") or {}, f"--resume: {cfg.out} was started with "
                    "different settings", "use the same flags or --overwrite")
    return "resume", None


def _where(key: str, value):
    """Paths compare by where they point (a relative and an absolute path to one teacher agree)."""
    return os.path.realpath(value) if key in ("teacher", "logits") and value else value


def _refuse_changes(cfg: TrainConfig, saved: dict, what: str, fix: str) -> None:
    """Settings that change the weights must be the ones the run was made with."""
    current = cfg.compared_fields()
    # A setting the saved run does not record predates it: it ran at the default (--precision fp32).
    defaults = field_defaults(type(cfg))
    changed = sorted(k for k, v in current.items() if _where(k, saved.get(k, defaults.get(k, v))) != _where(k, v))
    if changed:
        raise ArtifactError(f"{what} ({', '.join(changed)}); {fix}")


@contextmanager
def claim(cfg: TrainConfig, action: str) -> Iterator[Path]:
    """Hold --out for this process while it trains and writes (a lock that the system drops
    when the process ends, however it ends), after making it ready: a fresh run clears what
    kdcli made there (never other files); both clear the temporary files a killed writer left.
    A second kdcli process writing the same --out is refused instead of mixing two runs."""
    out = Path(cfg.out)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd = os.open(out / runs.LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o666)
    except OSError as exc:
        raise ArtifactError(f"--out {out}: cannot write there ({exc.strerror or exc})") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ArtifactError(f"--out {out}: another kdcli process is writing this run dir; let it "
                                "finish, or stop it and pass --resume") from None
        except OSError as exc:
            if exc.errno not in (errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise ArtifactError(f"--out {out}: cannot lock {runs.LOCK_FILE} ({exc.strerror})") from None
            # a filesystem without locks (some NFS and Lustre mounts): one writer is then up to you
        now = runs.inspect(out, verify="none")  # what another process may have done since `decide`
        if not cfg.overwrite and (now.state == "complete" or (action == "resume") != now.resumable):
            raise ArtifactError(f"--out {out}: changed by another kdcli process while this one "
                                f"prepared (now {now.state}); run the command again")
        if action == "fresh":
            # the completion marker first, so a half-cleared dir never looks complete
            for name in runs.KDCLI_FILES:
                (out / name).unlink(missing_ok=True)
        clear_temporaries(out)
        yield out
    finally:
        os.close(fd)  # releases the lock


def train_and_finish(plan: Plan, progress=None) -> RunResult:
    """Hold --out, train, and write the run's artifacts (run.json last)."""
    from kdcli.train.loop import fit

    p = plan.p
    w = world()
    barrier()  # under torchrun: every process has planned before rank 0 touches --out
    if not w.main:  # it trains its slice of each batch; rank 0 writes
        barrier()  # rank 0 has made --out ready
        fit(p.cfg, p.model, p.subset.split, plan.evaluator, task=p.task, model_input=p.dataset.model_input,
            objective=plan.objective, device=p.device, run_dir=Path(p.cfg.out), attempts=plan.attempts,
            progress=progress)
        return RunResult(Path(p.cfg.out), False, {}, [])
    with claim(p.cfg, plan.action) as out:
        barrier()
        rows = fit(p.cfg, p.model, p.subset.split, plan.evaluator, task=p.task,
                   model_input=p.dataset.model_input, objective=plan.objective, device=p.device,
                   run_dir=out, attempts=plan.attempts, progress=progress)
        run = finish(p, out, rows, plan.attempts, plan.info, plan.evaluator)
    return RunResult(out, False, run, rows)


def finish(p, out: Path, rows: list[dict], attempts: list[dict], info: dict, evaluator) -> dict:
    """Write the weights, metrics, subset and test predictions, then run.json (last). `p` is
    the stage's Prepared inputs; `attempts` every attempt at the run, this one last (fit's
    list); `info` adds stage-specific fields (method, kd) to run.json; `evaluator` (the run's
    kdcli.train.loop.Evaluator) gives the test predictions."""
    cfg, dataset, subset, model = p.cfg, p.dataset, p.subset, p.model
    run_id = uuid.uuid4().hex[:16]
    attempts[-1].update(ended=now_iso(), outcome="completed")
    data = dataset.describe()
    inputs = p.teacher.inputs() if p.teacher is not None else {}
    save_model(out / runs.MODEL_FILE, model, model_name=cfg.model, model_args=p.model_args,
               dataset=data, run_id=run_id, num_classes=dataset.num_classes, inputs=inputs)
    common_meta = {"format_version": str(runs.RUN_FORMAT_VERSION), "run_id": run_id,
                   "dataset_fingerprint": data["fingerprint"], "model_name": cfg.model,
                   "model_args": p.model_args, "inputs": inputs}
    write_metrics(out / runs.METRICS_FILE, rows, {"format": "kdcli-metrics", **common_meta})
    write_table(out / runs.SUBSET_FILE, {"index": subset.indices},
                {"format": "kdcli-subset", **common_meta, "kappa": str(subset.kappa),
                 "subset_seed": str(subset.seed), "n_pool": str(subset.n_pool), "sha256": subset.sha256})
    kind = dataset.task.kind
    sample = ("every test sample" if kind == "classification" else
              f"{PREDICTION_POSITIONS} counted test positions drawn with seed {PREDICTION_SEED}")
    save_tensors(out / runs.PREDICTIONS_FILE, evaluator.predictions(model),
                 predictions_meta(run_id=run_id, dataset_fingerprint=data["fingerprint"], model_name=cfg.model,
                                  model_args=p.model_args, kind=kind, sample=sample, inputs=inputs))
    run = {
        "format": "kdcli-run",
        "format_version": runs.RUN_FORMAT_VERSION,
        "run_id": run_id,
        "stage": cfg.stage,
        **info,
        "config": cfg.to_dict(),
        "recipe": p.recipe,
        "task": dataset.task.describe(),
        "dataset": data,
        "model": {"name": cfg.model, "args": p.model_args,
                  "parameters": sum(t.numel() for t in model.parameters())},
        "subset": {"kappa": cfg.kappa, "seed": cfg.subset_seed, "size": len(subset.split),
                   "n_pool": subset.n_pool, "sha256": subset.sha256, "file": runs.SUBSET_FILE},
        "teacher": None if p.teacher is None else p.teacher.record(),
        "selection": "last step (no model selection on the test set)",
        "final": rows[-1],
        "artifacts": {name: sha256_file(out / name) for name in ARTIFACTS},
        "artifact_bytes": {name: (out / name).stat().st_size for name in ARTIFACTS},
        "attempts": attempts,
        "world": world().describe(),
        "provenance": provenance(started=attempts[-1]["started"], inputs=inputs,
                                 seeds={"seed": cfg.seed, "subset_seed": cfg.subset_seed}),
    }
    write_json(out / runs.RUN_JSON, run)  # the completion marker, last
    clear_state(out)
    return run
