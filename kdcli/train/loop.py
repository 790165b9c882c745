"""The one training loop behind train-teacher, train-labels and distill.

Data lives in memory as tensors (on the device); each epoch draws a permutation
from a generator seeded by --seed, so two runs with the same seed and subset see
the same batches in the same order whatever their loss (the pairing of DESIGN.md).
Work is counted in steps: evaluation (--eval-every) and the resumable checkpoint
(--checkpoint-every) each come every N steps or every N minutes, independently,
and a checkpoint may fall inside an epoch (it keeps that epoch's order).
Losses and metrics are over rows (kdcli/task.py). Model selection: the
weights after the last step; no step is chosen on the test set.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from kdcli.config import TrainConfig, parse_interval
from kdcli.data.augment import augment
from kdcli.data.base import Split
from kdcli.errors import Stopped
from kdcli.io.provenance import now_iso
from kdcli.io.runs import CKPT_TENSORS
from kdcli.losses.eager import kd_rows
from kdcli.progress import Progress
from kdcli.task import IGNORE, ROW_METRICS, Task
from kdcli.teacher import TeacherRows
from kdcli.train import distributed
from kdcli.train.schedule import lr_at, make_optimizer
from kdcli.train.signals import StopOnSignal
from kdcli.train.state import load_state, save_state

# objective(student_logits, inputs, targets, positions in the training split) -> 0-d loss
Objective = Callable[[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
EVALUATIONS_BY_DEFAULT = 10


# Inference batches of long windows over large vocabularies are capped to this many logits
# (64 MB in float32): 64 windows of 128 tokens at V = 2,048. A classification batch reaches it
# only beyond 16,384 samples of 1,024 classes.
LOGITS_PER_BATCH = 1 << 24
# Rows of the float64 fidelity KL are taken this many logits at a time (8 MB per temporary).
KL_BLOCK_ELEMENTS = 1 << 20


def inference_batch(batch_size: int, split: Split, task: Task) -> int:
    """Samples per inference batch: `batch_size`, fewer when a sample has many rows of logits."""
    rows = split.y[0].numel() if len(split) else 1
    return max(1, min(batch_size, LOGITS_PER_BATCH // (rows * task.outputs)))


@torch.inference_mode()
def predict_batches(model: torch.nn.Module, x: torch.Tensor, model_input: Callable, batch_size: int,
                    device: torch.device):
    """(start, float32 logits) of `model` (in its current mode) on stored samples x, batch by batch."""
    for i in range(0, len(x), batch_size):
        yield i, model(model_input(x[i:i + batch_size].to(device))).float()


@torch.inference_mode()
def evaluate(model: torch.nn.Module, split: Split, task: Task, model_input: Callable,
             batch_size: int, device: torch.device, teacher: TeacherRows | None = None,
             token_bytes: torch.Tensor | None = None) -> dict:
    """The task's test metrics (mean over rows), and fidelity to the teacher when there is one.

    Keeps running float64 sums, batch by batch: memory does not grow with the split.
    teacher_agreement: top-1 agreement; teacher_kl: KL(softmax(t) ‖ softmax(s)) at τ = 1, nats;
    teacher_acc: the teacher's own top-1 accuracy on these rows (under --cross-dataset, the
    teacher's accuracy on the student's data).
    Sequence tasks add test_ppl = exp(test_loss) and, given the bytes each token stands for,
    test_bpb = Σ loss / (ln 2 · Σ bytes of the target tokens): bits per byte of the evaluated
    text, comparable across tokenizers.
    """
    was_training = model.training
    model.eval()
    zero = lambda: torch.zeros((), dtype=torch.float64, device=device)  # noqa: E731
    sums = {name: zero() for name in (*task.metrics, "agreement", "kl", "bytes", "teacher_acc")}
    rows = 0
    batch_size = inference_batch(batch_size, split, task)
    for start in range(0, len(split), batch_size):
        x = model_input(split.x[start:start + batch_size].to(device))
        s, y = task.rows(model(x).float(), split.y[start:start + batch_size].to(device))
        keep = task.mask(y)
        t = None
        if teacher is not None:
            positions = torch.arange(start, start + len(x), device=device)
            t = task.rows(teacher(positions, x), y)[0]
        if keep is not None:
            s, y, t = s[keep], y[keep], (None if t is None else t[keep])
        rows += len(y)
        for name in task.metrics:
            sums[name] += ROW_METRICS[name](s, y).double().sum()
        if token_bytes is not None:
            sums["bytes"] += token_bytes.to(device)[y].double().sum()
        if t is not None:
            sums["agreement"] += (s.argmax(-1) == t.argmax(-1)).double().sum()
            sums["teacher_acc"] += (t.argmax(-1) == y).double().sum()
            step = max(1, KL_BLOCK_ELEMENTS // s.shape[-1])  # float64 temporaries stay small
            for i in range(0, len(s), step):
                sums["kl"] += kd_rows(s[i:i + step].double(), t[i:i + step].double(), 1.0).sum()
    model.train(was_training)
    rows = rows or math.nan  # no row counted: NaN metrics, never a perfect 0
    out = {name: sums[name].item() / rows for name in task.metrics}
    if task.kind == "sequence" and "test_loss" in out:
        out["test_ppl"] = math.exp(out["test_loss"])
        if token_bytes is not None:
            out["test_bpb"] = sums["test_loss"].item() / (math.log(2) * sums["bytes"].item())
    if teacher is not None:
        out["teacher_agreement"] = sums["agreement"].item() / rows
        out["teacher_kl"] = sums["kl"].item() / rows
        out["teacher_acc"] = sums["teacher_acc"].item() / rows
    return out


# Sequence tasks: counted test positions a run's predictions file keeps (a fixed sample).
PREDICTION_POSITIONS = 2048
PREDICTION_SEED = 0  # the sample's generator seed: every run on a test split keeps the same positions


def prediction_rows(split: Split, task: Task) -> torch.Tensor | None:
    """The test rows a predictions file keeps, as flat row indices (sample · rows per sample +
    position): None for classification (every sample); for sequence tasks PREDICTION_POSITIONS
    counted positions drawn without replacement by a generator seeded PREDICTION_SEED, sorted."""
    if task.kind == "classification":
        return None
    y = split.y.reshape(-1)
    counted = torch.arange(len(y)) if not task.masked else (y != IGNORE).nonzero().squeeze(1).cpu()
    pick = torch.randperm(len(counted), generator=torch.Generator().manual_seed(PREDICTION_SEED))
    return counted[pick[:PREDICTION_POSITIONS]].sort().values


@torch.inference_mode()
def predictions(model: torch.nn.Module, split: Split, task: Task, model_input: Callable, batch_size: int,
                device: torch.device) -> dict[str, torch.Tensor]:
    """The model's test predictions as a predictions file stores them: `log_probs` [R, V]
    (log-softmax, float16, floored at float16's lowest value: finite unless the outputs are NaN),
    `targets` [R] and `rows` [R] (prediction_rows; for classification the sample's position in
    the split). Only batches holding a kept row are run."""
    was_training = model.training
    model.eval()
    keep = prediction_rows(split, task)
    per_sample = split.y[0].numel() if len(split) else 1
    batch_size = inference_batch(batch_size, split, task)
    out = {"log_probs": [], "targets": [], "rows": []}
    for start in range(0, len(split), batch_size):
        stop = min(start + batch_size, len(split))
        lo, hi = start * per_sample, stop * per_sample
        rows = torch.arange(lo, hi) if keep is None else keep[(keep >= lo) & (keep < hi)]
        if not len(rows):
            continue
        s, y = task.rows(model(model_input(split.x[start:stop].to(device))).float(),
                         split.y[start:stop].to(device))
        at = (rows - lo).to(device)
        out["log_probs"].append(torch.log_softmax(s[at], -1).clamp_min(FLOAT16_LOWEST).half().cpu())
        out["targets"].append(y[at].long().cpu())
        out["rows"].append(rows.long())
    model.train(was_training)
    empty = {"log_probs": torch.zeros(0, task.outputs, dtype=torch.float16),
             "targets": torch.zeros(0, dtype=torch.long), "rows": torch.zeros(0, dtype=torch.long)}
    return {k: torch.cat(v) if v else empty[k] for k, v in out.items()}


FLOAT16_LOWEST = float(torch.finfo(torch.float16).min)


@dataclass
class Evaluator:
    """What each evaluation measures: the test split, and any further test split (e.g. an
    out-of-distribution text) with its columns prefixed by its name; fidelity to the teacher
    on each where there is one."""

    sets: dict[str, tuple[Split, TeacherRows | None]]  # prefix ("" for the test split) -> split, teacher
    task: Task
    model_input: Callable
    batch_size: int
    device: torch.device
    token_bytes: torch.Tensor | None = None

    def to(self, device: torch.device) -> Evaluator:
        """The same evaluation with the splits' samples on `device`."""
        sets = {k: (Split(s.x.to(device), s.y.to(device), s.index), t) for k, (s, t) in self.sets.items()}
        return Evaluator(sets, self.task, self.model_input, self.batch_size, device, self.token_bytes)

    def __call__(self, model: torch.nn.Module) -> dict:
        out = {}
        for prefix, (split, teacher) in self.sets.items():
            got = evaluate(model, split, self.task, self.model_input, self.batch_size, self.device,
                           teacher, self.token_bytes)
            out.update({f"{prefix}_{k}" if prefix else k: v for k, v in got.items()})
        return out

    def predictions(self, model: torch.nn.Module) -> dict[str, torch.Tensor]:
        """The model's predictions on the test split (see `predictions`)."""
        split, _ = self.sets[""]
        return predictions(model, split, self.task, self.model_input, self.batch_size, self.device)


AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}  # --precision


def counted_rows(targets: torch.Tensor, task: Task) -> torch.Tensor | int:
    """How many rows of a batch count toward its mean loss."""
    keep = task.mask(targets)
    return targets.numel() if keep is None else keep.sum()


def steps_plan(cfg: TrainConfig, n_train: int) -> tuple[int, int]:
    """(steps per epoch, total steps); the last batch of an epoch may be short."""
    per_epoch = math.ceil(n_train / cfg.batch_size)
    total = cfg.steps if cfg.steps is not None else cfg.epochs * per_epoch
    return per_epoch, total


class Every:
    """An interval in steps or minutes (--eval-every, --checkpoint-every); 0 steps: never."""

    def __init__(self, spec: str | None, flag: str, default_steps: int = 0):
        self.unit, self.n = ("steps", default_steps) if spec is None else parse_interval(spec, flag)
        self.last = time.monotonic()

    def due(self, step: int) -> bool:
        if self.unit == "steps":
            return self.n > 0 and step % self.n == 0
        if time.monotonic() - self.last >= 60 * self.n:
            self.last = time.monotonic()
            return True
        return False

    def restart(self) -> None:
        """The interval starts again now (a minute interval; steps count from 0 anyway)."""
        self.last = time.monotonic()


@dataclass
class TrainMeter:
    """Running train loss and accuracy over rows since the last evaluation (on the device)."""

    loss_sum: torch.Tensor
    correct: torch.Tensor
    rows: torch.Tensor
    started: float = field(default_factory=time.perf_counter)

    @classmethod
    def zeros(cls, device: torch.device) -> TrainMeter:
        return cls(torch.zeros((), device=device), torch.zeros((), device=device, dtype=torch.long),
                   torch.zeros((), device=device, dtype=torch.long))

    def add(self, loss: torch.Tensor, logits: torch.Tensor, targets: torch.Tensor, task: Task) -> None:
        s, y = task.rows(logits.detach(), targets)
        keep = task.mask(y)
        n = y.numel() if keep is None else keep.sum()
        self.loss_sum += loss.detach() * n
        self.correct += (s.argmax(-1) == y).sum()  # a masked target (−100) never equals a class
        self.rows += n

    def metrics_row(self, step: int, per_epoch: int, lr: float, evaluation: dict) -> dict:
        """One metrics.parquet row: the step, the train metrics since the last row, the learning
        rate, the evaluation."""
        return {"step": step, "epoch": step / per_epoch, **self.row(), "lr": lr, **evaluation}

    def row(self) -> dict:
        rows = max(int(self.rows), 1)
        return {"train_loss": self.loss_sum.item() / rows, "train_acc": self.correct.item() / rows,
                "seconds": time.perf_counter() - self.started}


def fit(cfg: TrainConfig, model: torch.nn.Module, train: Split, evaluator: Evaluator, *, task: Task,
        model_input: Callable, objective: Objective, device: torch.device, run_dir: Path,
        attempts: list[dict], progress: Progress | None = None) -> list[dict]:
    """Train `model` in place; returns one metrics row per evaluation.

    With cfg.resume the state of the last checkpoint is restored (weights, optimiser,
    RNG streams, the epoch's order, the running train metrics), so the run ends with the
    same weights as an uninterrupted one.

    `attempts` holds this attempt's record (provenance.this_attempt); a resumed run puts the
    earlier attempts its checkpoint recorded in front. Every checkpoint stores the list, this
    attempt's last step and outcome included: "stopped (SIGTERM)" when a signal stopped it,
    else "killed after its last checkpoint", which holds if no later record replaces it.
    """
    progress = progress or Progress()
    world = distributed.world()
    per_epoch, total = steps_plan(cfg, len(train))
    optimizer = make_optimizer(cfg, [p for p in model.parameters() if p.requires_grad])
    generators = {"order": torch.Generator().manual_seed(cfg.seed),
                  "augment": torch.Generator().manual_seed(cfg.seed + 1_000_003)}
    # Loading a teacher builds a network and draws from the global RNG; reseed so the
    # global stream (dropout, stochastic depth) is the same in both arms of a pair (and its
    # own in each torchrun process).
    torch.manual_seed(cfg.seed + 2_000_003 + world.rank)
    rows: list[dict] = []
    step = 0
    perm = None
    meter = TrainMeter.zeros(device)
    scaler = torch.amp.GradScaler(device.type) if cfg.precision == "fp16" else None
    if cfg.resume and (run_dir / CKPT_TENSORS).is_file():
        saved = load_state(run_dir, model=model, optimizer=optimizer, generators=generators)
        step, rows = saved.progress["step"], saved.progress["rows"]
        perm = saved.tensors["order.perm"].to(device)
        meter = TrainMeter(*(saved.tensors[f"meter.{k}"].to(device) for k in ("loss_sum", "correct", "rows")))
        if not world.main:  # the checkpoint holds every process's running sums, summed: rank 0 keeps them
            meter = TrainMeter.zeros(device)
        if scaler is not None and "scaler" in saved.progress:
            scaler.load_state_dict(saved.progress["scaler"])
        attempts[:-1] = saved.progress.get("attempts", [])  # none in checkpoints of kdcli < 0.5
        attempts[-1].update(first_step=step, last_step=step)
        if world.distributed:  # this process's own global stream
            torch.set_rng_state(saved.tensors[f"rng.rank{world.rank}.torch"])
            if device.type == "cuda":
                torch.cuda.set_rng_state(saved.tensors[f"rng.rank{world.rank}.cuda"], device)

    evals = Every(cfg.eval_every, "--eval-every", default_steps=math.ceil(total / EVALUATIONS_BY_DEFAULT))
    checkpoints = Every(cfg.checkpoint_every, "--checkpoint-every")
    x, y = train.x.to(device), train.y.to(device)
    evaluator = evaluator.to(device)
    progress.start(total, step)
    model.train()
    lr = lr_at(cfg, step, total, per_epoch)

    def checkpoint(outcome: str) -> None:
        attempts[-1].update(ended=now_iso(), last_step=step, outcome=outcome)
        sums = [meter.loss_sum.clone(), meter.correct.clone(), meter.rows.clone()]
        distributed.sum_(sums)  # every process's running train metrics (training goes on with its own)
        tensors = {"order.perm": perm, **{f"meter.{k}": t for k, t in zip(("loss_sum", "correct", "rows"), sums)}}
        if world.distributed:  # every process's global RNG stream (dropout), kept by rank 0
            states = distributed.gather_objects(
                {"torch": torch.get_rng_state(),
                 "cuda": torch.cuda.get_rng_state(device).cpu() if device.type == "cuda" else None})
            for r, st in enumerate(states):
                tensors.update({f"rng.rank{r}.{k}": v for k, v in st.items() if v is not None})
        if world.main:
            save_state(run_dir, model=model, optimizer=optimizer, generators=generators, tensors=tensors,
                       progress={"step": step, "rows": rows, "config": cfg.compared_fields(),
                                 "attempts": attempts, "world_size": world.size,
                                 **({"scaler": scaler.state_dict()} if scaler is not None else {})})

    net = model
    if world.distributed:
        from torch.nn.parallel import DistributedDataParallel

        net = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if cfg.compile:
        net = torch.compile(net)
    autocast = AUTOCAST[cfg.precision]
    with StopOnSignal() as stop:
        while step < total:
            b = step % per_epoch
            if b == 0:
                perm = torch.randperm(len(y), generator=generators["order"]).to(device)
            pos = perm[b * cfg.batch_size:(b + 1) * cfg.batch_size]
            xb, yb = x[pos], y[pos]
            if cfg.augment:
                xb = augment(xb, generators["augment"])
            weight = None
            if world.distributed:  # this process's slice of the global batch, and its share of it
                mine, n_mine = distributed.slice_of(torch.arange(len(pos), device=device))
                weight = world.size * counted_rows(yb[mine], task) / counted_rows(yb, task) if n_mine else 0.0
                xb, yb, pos = xb[mine], yb[mine], pos[mine]
            xb = model_input(xb)
            lr = lr_at(cfg, step, total, per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            with torch.autocast(device.type, dtype=autocast, enabled=autocast is not None):
                logits = net(xb)
            loss = objective(logits if autocast is None else logits.float(), xb, yb, pos)  # a float32 loss
            optimizer.zero_grad(set_to_none=True)
            # DDP averages the processes' gradients: weighted, that is the global batch's mean
            if weight is None:
                scaled = loss
            elif weight:
                scaled = loss * weight
            else:  # no row of this slice counts: no gradient from it, but DDP's all-reduce all the same
                scaled = logits.float().sum() * 0.0
            (scaled if scaler is None else scaler.scale(scaled)).backward()
            if cfg.grad_clip is not None:
                if scaler is not None:
                    scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
            if scaler is None:
                optimizer.step()
            else:  # skips the step when the fp16 gradients overflowed, and adapts the scale
                scaler.step(optimizer)
                scaler.update()
            step += 1
            if weight is None or weight:
                meter.add(loss, logits, yb, task)
            progress.advance(step)
            evaluate_now, checkpoint_now, stopping = distributed.any_of(
                [step == total or evals.due(step), step < total and checkpoints.due(step),
                 stop.signum is not None], device)  # every process decides alike
            if evaluate_now:  # a minute interval restarts in every process, not only where it fired
                evals.restart()
            if checkpoint_now:
                checkpoints.restart()
            if evaluate_now:
                distributed.sum_([meter.loss_sum, meter.correct, meter.rows])
                row = meter.metrics_row(step, per_epoch, lr, evaluator(model) if world.main else {})
                rows.append(row)
                progress.metrics(row)
                meter = TrainMeter.zeros(device)
            name = stop.name or "SIGTERM"  # a process stopping because another one was signalled
            if step < total and (checkpoint_now or stopping):
                checkpoint(f"stopped ({name})" if stopping else "killed after its last checkpoint")
            if step < total and stopping:
                distributed.barrier()  # rank 0 has written the checkpoint before any process exits
                raise Stopped(f"{name} at step {step} of {total}; a checkpoint is saved in "
                              f"{run_dir}: run the same command with --resume to continue",
                              stop.signum or signal.SIGTERM)
    attempts[-1]["last_step"] = step
    return rows
