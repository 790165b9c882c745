"""Stage configs: frozen dataclasses whose validation names the flag at fault."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field

from kdcli.errors import ConfigError

OPTIMIZERS = ("sgd", "adamw")


def need(cond: bool, flag: str, what: str, value) -> None:
    """Config validation: `flag value: expected what` when cond does not hold."""
    if not cond:
        raise ConfigError(f"{flag} {value}: expected {what}")

SCHEDULES = ("cosine", "step", "constant")


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a `train-teacher` / `train-labels` run."""

    out: str
    stage: str = "train-labels"
    dataset: str | None = None  # None: the teacher's dataset, else mnist1d
    dataset_args: dict = field(default_factory=dict)
    data_dir: str | None = None
    model: str | None = None  # None: the teacher's model (self-distillation), else cnn1d
    model_args: dict = field(default_factory=dict)
    teacher: str | None = None  # a teacher run dir: dataset, n_T and pool come from it
    logits: str | None = None  # a teacher logits file (dump-logits): same, without the weights
    kappa: float = 1.0
    subset_seed: int = 0
    seed: int = 0
    epochs: int | None = 30
    steps: int | None = None  # overrides epochs: train exactly this many optimizer steps
    batch_size: int = 128
    optimizer: str = "adamw"
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup_epochs: float = 0.0
    step_milestones: tuple[float, ...] = (0.5, 0.75)  # fractions of training, for --schedule step
    step_gamma: float = 0.1
    label_smoothing: float = 0.0
    # Label-smoothing control: set ε to the teacher's mean non-target mass at this τ
    # on the student's subset (train-labels with --teacher or --logits).
    match_smoothing_tau: float | None = None
    grad_clip: float | None = None
    augment: bool = False
    eval_every: int = 1  # evaluate (and checkpoint) every N epochs, and always after the last
    eval_batch_size: int = 2048
    device: str = "auto"
    threads: int | None = None  # None: $SLURM_CPUS_PER_TASK or all cores (see train/device.py)
    overwrite: bool = False
    resume: bool = False

    def __post_init__(self):
        need(math.isfinite(self.kappa) and self.kappa > 0, "--kappa", "a number > 0", self.kappa)
        need(self.epochs is None or self.epochs >= 1, "--epochs", "an integer ≥ 1", self.epochs)
        need(self.steps is None or self.steps >= 1, "--steps", "an integer ≥ 1", self.steps)
        need(self.epochs is not None or self.steps is not None, "--epochs", "--epochs or --steps", None)
        need(self.batch_size >= 1, "--batch-size", "an integer ≥ 1", self.batch_size)
        need(self.eval_every >= 1, "--eval-every", "an integer ≥ 1", self.eval_every)
        need(self.eval_batch_size >= 1, "--eval-batch-size", "an integer ≥ 1", self.eval_batch_size)
        need(self.optimizer in OPTIMIZERS, "--optimizer", " or ".join(OPTIMIZERS), self.optimizer)
        need(self.schedule in SCHEDULES, "--schedule", ", ".join(SCHEDULES), self.schedule)
        need(self.lr > 0, "--lr", "a learning rate > 0", self.lr)
        need(self.weight_decay >= 0, "--weight-decay", "a value ≥ 0", self.weight_decay)
        need(0 <= self.momentum < 1, "--momentum", "a value in [0, 1)", self.momentum)
        need(math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0, "--warmup-epochs",
             "a finite value ≥ 0", self.warmup_epochs)
        need(math.isfinite(self.lr), "--lr", "a finite learning rate", self.lr)
        need(0 <= self.label_smoothing < 1, "--label-smoothing", "a value in [0, 1)", self.label_smoothing)
        need(self.match_smoothing_tau is None or self.match_smoothing_tau > 0, "--match-smoothing-tau",
             "a temperature > 0", self.match_smoothing_tau)
        need(self.match_smoothing_tau is None or self.stage == "train-labels",
             "--match-smoothing-tau", "train-labels only", self.match_smoothing_tau)
        need(self.grad_clip is None or self.grad_clip > 0, "--grad-clip", "a norm > 0", self.grad_clip)
        need(self.threads is None or self.threads >= 1, "--threads", "an integer ≥ 1", self.threads)
        need(not (self.overwrite and self.resume), "--resume", "either --resume or --overwrite, not both", "")
        if self.stage == "train-teacher":
            need(self.kappa == 1.0, "--kappa", "1 for a teacher (it trains on the whole pool)", self.kappa)
            need(self.teacher is None, "--teacher", "no teacher for train-teacher", self.teacher)
            need(self.logits is None, "--logits", "no logits for train-teacher", self.logits)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def training_fields(self) -> dict:
        """The fields that change the trained weights (compared on --resume and before a
        skip), as JSON values: tuples become lists, as they read back from a file."""
        d = self.to_dict()
        for k in ("out", "overwrite", "resume", "device", "threads", "eval_batch_size"):
            d.pop(k)
        return json.loads(json.dumps(d))


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """A `distill` run: TrainConfig plus the distillation loss.

    L = α·τ²·KL(softmax(t/τ) ‖ softmax(s/τ)) + (1−α)·CE(y, s), mean over samples.
    """

    stage: str = "distill"
    tau: float = 4.0
    alpha: float = 1.0
    kd_backend: str = "auto"

    def __post_init__(self):
        super().__post_init__()
        if not (math.isfinite(self.tau) and self.tau > 0):
            raise ConfigError(f"--tau {self.tau}: expected a temperature > 0")
        if self.kd_backend not in ("auto", "eager", "fused", "triton"):
            raise ConfigError(f"--kd-backend {self.kd_backend}: expected auto, eager, fused or triton")
        if not 0 <= self.alpha <= 1:
            raise ConfigError(f"--alpha {self.alpha}: expected a weight in [0, 1] (1 = pure distillation)")
        if self.teacher is None and self.logits is None:
            raise ConfigError("--logits or --teacher is required: offline distillation reads a logits "
                              "file (dump-logits); online distillation runs the teacher per batch")
        if self.augment and self.logits is not None:
            raise ConfigError("--augment with --logits: stored logits are of clean inputs, not of the "
                              "augmented views; distil online with --teacher instead")


@dataclass(frozen=True)
class DumpConfig:
    """A `dump-logits` run: the teacher's raw logits for its pool and the test split."""

    teacher: str
    out: str
    dtype: str = "float32"
    topk: int | None = None
    extra_train: int = 0  # fresh train samples after the pool, for students with κ > 1
    data_dir: str | None = None
    batch_size: int = 2048
    device: str = "auto"
    overwrite: bool = False

    def __post_init__(self):
        if self.dtype not in ("float16", "float32"):
            raise ConfigError(f"--dtype {self.dtype}: expected float16 or float32")
        if self.topk is not None and self.topk < 1:
            raise ConfigError(f"--topk {self.topk}: expected an integer ≥ 1")
        if self.extra_train < 0:
            raise ConfigError(f"--extra-train {self.extra_train}: expected an integer ≥ 0")
        if self.batch_size < 1:
            raise ConfigError(f"--batch-size {self.batch_size}: expected an integer ≥ 1")
        if not self.out.endswith(".parquet"):
            raise ConfigError(f"--out {self.out}: expected a .parquet file name")
