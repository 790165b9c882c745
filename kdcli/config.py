"""Stage configs: each setting declared once, with its default, help text, flag and role.

The CLI builds every command's options from these fields (kdcli/cli/build.py), and
every list of "settings that matter" is derived from the roles instead of being
kept by hand:

- training: changes the trained weights. Compared before a completed run is
  skipped or an interrupted one resumed; paired runs share it (report pairing);
  sweepable.
- arm: the loss that defines an arm (τ, α, ε, the KD backend). Compared before a
  skip or resume; never part of the pairing key; sweepable.
- input: what is trained on and with (dataset, model, teacher). Compared before a
  skip or resume; pairs share it through the dataset fingerprint, the model and the
  teacher's run id; sweepable.
- run: how and where the run executes (out, device, threads, evaluation and
  checkpoint intervals, data location). Changes neither the weights nor the pairing.

Training settings whose default is None and `recipe=True` come from the recipe of
the dataset and model (kdcli/train/recipes.py) unless given.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from dataclasses import dataclass, field

from kdcli.errors import ConfigError

ROLES = ("training", "arm", "input", "run")
OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("cosine", "step", "constant")
KD_BACKENDS = ("auto", "eager", "fused", "triton")
TOPK_TAILS = ("uniform", "bucket")  # kdcli/losses/topk.py
STUDENT_STAGES = ("train-labels", "distill")


def setting(default=None, help: str = "", role: str = "run", *, flag: str | None = None,
            cli: bool = True, stages: tuple[str, ...] | None = None, recipe: bool = False,
            required: bool = False, factory=None):
    """A config field with what the CLI and the role-derived lists need to know about it.

    flag: the option as typed ("--out/-o", "--augment/--no-augment"); default --NAME.
    stages: the commands that offer it (None: every command of the config).
    recipe: None means "the dataset/model recipe's value" (training settings only).
    required: the command line insists on it (the config checks it too).
    """
    assert role in ROLES, role
    meta = {"help": help, "role": role, "flag": flag, "cli": cli, "stages": stages, "recipe": recipe,
            "required": required}
    if factory is not None:
        return field(default_factory=factory, metadata=meta)
    return field(default=default, metadata=meta)


def data_dir_setting():
    """--data-dir, as every command that reads a dataset declares it."""
    return setting(None, "Folder holding the dataset's files (never downloaded).", "run")


def device_setting():
    """--device, as every command that runs a model declares it."""
    return setting("auto", "auto (CUDA when available), cpu, cuda or cuda:N.", "run")


def threads_setting(note: str = ""):
    """--threads; `note` is added to the help in parentheses."""
    return setting(None, "CPU threads; default what slurm gave the task ($SLURM_CPUS_PER_TASK, else "
                         f"$SLURM_CPUS_ON_NODE), else 1{f' ({note})' if note else ''}.", "run")


def need(cond: bool, flag: str, what: str, value) -> None:
    """Config validation: `flag value: expected what` when cond does not hold."""
    if not cond:
        raise ConfigError(f"{flag} {value}: expected {what}")


PRECISIONS = ("fp32", "bf16", "fp16")


def fields_with_role(cls, *roles: str) -> list[str]:
    return [f.name for f in dataclasses.fields(cls) if f.metadata.get("role") in roles]


def field_defaults(cls) -> dict:
    """Each field's default (a factory's value too); a field without one is left out. A setting a
    saved run does not record predates it: it ran at this default."""
    out = {}
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            out[f.name] = f.default
        elif f.default_factory is not dataclasses.MISSING:
            out[f.name] = f.default_factory()
    return out


def without_overridden(settings: dict) -> dict:
    """Settings less those another one overrides: --steps overrides --epochs."""
    if settings.get("steps") is not None:
        return {k: v for k, v in settings.items() if k != "epochs"}
    return settings


INTERVAL = re.compile(r"^(?P<n>\d+(?:\.\d+)?)(?P<unit>m?)$")


def parse_interval(text: str, flag: str) -> tuple[str, float]:
    """'500' -> ('steps', 500); '10m' -> ('minutes', 10); '0' -> ('steps', 0): never."""
    m = INTERVAL.match(str(text).strip())
    if m is None or (m["unit"] == "" and "." in m["n"]) or (m["unit"] == "m" and float(m["n"]) <= 0):
        raise ConfigError(f"{flag} {text}: expected a number of steps (e.g. 500; 0 = only after the "
                          "last step) or of minutes with an m suffix (e.g. 10m)")
    return ("minutes", float(m["n"])) if m["unit"] else ("steps", int(m["n"]))


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a `train-teacher` / `train-labels` run."""

    out: str = setting(None, "Run directory to create.", "run", flag="--out/-o", required=True)
    stage: str = setting("train-labels", role="input", cli=False)
    dataset: str | None = setting(
        None, "Dataset: mnist1d (default, generated offline), digits, cifar10, cifar100, "
              "parquet-images. A student takes its teacher's.", "input")
    dataset_args: dict = setting(
        help="Dataset argument KEY=VALUE (repeatable), e.g. n_train=40000.", role="input",
        flag="--dataset-arg", factory=dict)
    data_dir: str | None = data_dir_setting()
    model: str | None = setting(
        None, "Model: mlp, cnn1d (default), cnn, resnet20, resnet56, resnet_cifar, test_*, or "
              "tv:NAME (torchvision). A student takes its teacher's by default.", "input")
    model_args: dict = setting(help="Model argument KEY=VALUE (repeatable), e.g. channels=64.",
                               role="input", flag="--model-arg", factory=dict)
    teacher: str | None = setting(
        None, "Teacher run dir: dataset, pool and n_T (and by default the student model) come "
              "from it. distill: alone, online distillation (teacher forward per batch, needed with "
              "--augment); with --logits, checked against the file.", "input", stages=STUDENT_STAGES)
    logits: str | None = setting(
        None, "Teacher logits file from dump-logits (its metadata names the teacher and dataset).",
        "input", stages=STUDENT_STAGES)
    cross_dataset: bool = setting(
        False, "Distil from a teacher trained on another dataset of the same classes and input shape "
               "(e.g. MNIST-1D with other generator arguments): the student's data come from --dataset "
               "and --dataset-arg, κ from their pool; both datasets' fingerprints go into run.json. "
               "Needs --teacher (online); never --logits.", "input", flag="--cross-dataset",
        stages=STUDENT_STAGES)
    kappa: float = setting(1.0, "Fraction of the teacher's n_T to train on (>1: fresh samples).",
                           "training", stages=STUDENT_STAGES)
    subset_seed: int = setting(0, "Seed of the nested κ subset order (stratified by class).",
                               "training", stages=STUDENT_STAGES)
    seed: int = setting(0, "Seed of the initial weights, batch order and augmentation.", "training")
    epochs: int | None = setting(None, "Epochs over the training set. Default: the recipe's.",
                                 "training", recipe=True)
    steps: int | None = setting(None, "Optimizer steps (overrides --epochs).", "training")
    batch_size: int | None = setting(None, "Training batch size. Default: the recipe's.", "training",
                                     recipe=True)
    optimizer: str | None = setting(None, "sgd (Nesterov momentum) or adamw. Default: the recipe's.",
                                    "training", recipe=True)
    lr: float | None = setting(None, "Peak learning rate. Default: the recipe's.", "training", recipe=True)
    momentum: float = setting(0.9, "SGD momentum.", "training")
    weight_decay: float | None = setting(None, "Weight decay. Default: the recipe's.", "training",
                                         recipe=True)
    schedule: str | None = setting(
        None, "cosine, step (×0.1 at 50% and 75%) or constant. Default: the recipe's.", "training",
        recipe=True)
    warmup_epochs: float | None = setting(None, "Linear warm-up length in epochs. Default: the recipe's.",
                                          "training", recipe=True)
    step_milestones: tuple[float, ...] = setting((0.5, 0.75), role="training", cli=False)
    step_gamma: float = setting(0.1, role="training", cli=False)
    label_smoothing: float = setting(0.0, "Label smoothing ε of the cross-entropy.", "arm")
    match_smoothing_tau: float | None = setting(
        None, "Label-smoothing control: ε = the teacher's mean non-target mass at this τ on the "
              "subset.", "arm", stages=("train-labels",))
    grad_clip: float | None = setting(None, "Clip the gradient norm to this value.", "training")
    augment: bool = setting(False, "Random crop (padding 4) and horizontal flip; image datasets only.",
                            "training", flag="--augment/--no-augment")
    precision: str = setting(
        "fp32", "Training arithmetic: fp32, bf16 (autocast) or fp16 (autocast with a gradient scaler; "
                "CUDA only). Weights, optimizer, KD loss and evaluation stay float32.", "training")
    compile: bool = setting(False, "torch.compile the model for training (needs a C++ compiler on the "
                                   "CPU, Triton on CUDA).", "run", flag="--compile")
    eval_every: str | None = setting(
        None, "Evaluate every N steps, or every N minutes with an m suffix (10m); 0: only after "
              "the last step. Default: 10 evaluations per run.", "run")
    checkpoint_every: str = setting(
        "10m", "Save the resumable checkpoint every N steps, or every N minutes with an m suffix; "
               "0: never.", "run")
    eval_batch_size: int = setting(2048, "Evaluation batch size.", "run")
    device: str = device_setting()
    threads: int | None = threads_setting(
        "more threads can be several times slower on shared cores; a large model on an idle machine "
        "gains from more")
    overwrite: bool = setting(False, "Redo a completed or interrupted run.", "run", flag="--overwrite")
    resume: bool = setting(False, "Continue an interrupted run from its last checkpoint.", "run",
                           flag="--resume")

    def __post_init__(self):
        need(self.out is not None and str(self.out) != "", "--out", "a run directory", self.out)
        need(math.isfinite(self.kappa) and self.kappa > 0, "--kappa", "a number > 0", self.kappa)
        need(self.epochs is None or self.epochs >= 1, "--epochs", "an integer ≥ 1", self.epochs)
        need(self.steps is None or self.steps >= 1, "--steps", "an integer ≥ 1", self.steps)
        need(self.batch_size is None or self.batch_size >= 1, "--batch-size", "an integer ≥ 1",
             self.batch_size)
        need(self.eval_batch_size >= 1, "--eval-batch-size", "an integer ≥ 1", self.eval_batch_size)
        need(self.optimizer in (None, *OPTIMIZERS), "--optimizer", " or ".join(OPTIMIZERS), self.optimizer)
        need(self.schedule in (None, *SCHEDULES), "--schedule", ", ".join(SCHEDULES), self.schedule)
        need(self.lr is None or (math.isfinite(self.lr) and self.lr > 0), "--lr",
             "a finite learning rate > 0", self.lr)
        need(self.weight_decay is None or self.weight_decay >= 0, "--weight-decay", "a value ≥ 0",
             self.weight_decay)
        need(0 <= self.momentum < 1, "--momentum", "a value in [0, 1)", self.momentum)
        need(self.warmup_epochs is None or (math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0),
             "--warmup-epochs", "a finite value ≥ 0", self.warmup_epochs)
        need(0 <= self.label_smoothing < 1, "--label-smoothing", "a value in [0, 1)", self.label_smoothing)
        need(self.match_smoothing_tau is None or self.match_smoothing_tau > 0, "--match-smoothing-tau",
             "a temperature > 0", self.match_smoothing_tau)
        need(self.match_smoothing_tau is None or self.stage == "train-labels",
             "--match-smoothing-tau", "train-labels only", self.match_smoothing_tau)
        need(self.grad_clip is None or self.grad_clip > 0, "--grad-clip", "a norm > 0", self.grad_clip)
        need(self.precision in PRECISIONS, "--precision", ", ".join(PRECISIONS), self.precision)
        need(self.threads is None or self.threads >= 1, "--threads", "an integer ≥ 1", self.threads)
        need(not (self.overwrite and self.resume), "--resume", "either --resume or --overwrite, not both", "")
        if self.eval_every is not None:
            parse_interval(self.eval_every, "--eval-every")
        parse_interval(self.checkpoint_every, "--checkpoint-every")
        if self.cross_dataset and (self.teacher is None or self.logits is not None):
            raise ConfigError("--cross-dataset: needs --teacher and no --logits (the teacher runs online on the "
                              "student's data; a logits file holds its outputs on its own dataset's rows)")
        if self.stage == "train-teacher":
            need(self.kappa == 1.0, "--kappa", "1 for a teacher (it trains on the whole pool)", self.kappa)
            need(self.teacher is None, "--teacher", "no teacher for train-teacher", self.teacher)
            need(self.logits is None, "--logits", "no logits for train-teacher", self.logits)

    def replace(self, **changes) -> TrainConfig:
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def compared_fields(self) -> dict:
        """The settings a completed run is skipped with, or an interrupted one resumed with, only
        when they are unchanged (training, arm and input roles), as JSON values: tuples become
        lists, as they read back from a file. A matched ε is compared through its τ, and
        --epochs not at all when --steps overrides it."""
        d = {k: getattr(self, k) for k in fields_with_role(type(self), "training", "arm", "input")}
        if self.match_smoothing_tau is not None:
            d.pop("label_smoothing")
        return json.loads(json.dumps(without_overridden(d)))


@dataclass(frozen=True)
class DistillConfig(TrainConfig):
    """A `distill` run: TrainConfig plus the distillation loss.

    L = α·τ²·KL(softmax(t/τ) ‖ softmax(s/τ)) + (1−α)·CE(y, s), mean over rows.
    """

    stage: str = setting("distill", role="input", cli=False)
    tau: float = setting(4.0, "Temperature τ of both softmaxes in the KL term.", "arm")
    alpha: float = setting(1.0, "Weight of the KD term; 1 - alpha weighs hard-label CE.", "arm")
    kd_backend: str = setting(
        "auto", "KD loss backend: auto (triton on CUDA, fused on CPU, else eager), eager, fused or "
                "triton.", "arm")
    topk_tail: str = setting(
        "uniform", "With a top-k logits file (unused otherwise): uniform (the V-K tail classes "
                   "share the stored tail mass equally) or bucket (the (K+1)-bucket KL: top-k "
                   "classes plus one rest bucket).", "arm")

    def __post_init__(self):
        super().__post_init__()
        need(self.topk_tail in TOPK_TAILS, "--topk-tail", "uniform or bucket", self.topk_tail)
        need(math.isfinite(self.tau) and self.tau > 0, "--tau", "a temperature > 0", self.tau)
        need(self.kd_backend in KD_BACKENDS, "--kd-backend", "auto, eager, fused or triton", self.kd_backend)
        need(0 <= self.alpha <= 1, "--alpha", "a weight in [0, 1] (1 = pure distillation)", self.alpha)
        if self.teacher is None and self.logits is None:
            raise ConfigError("--logits or --teacher is required: offline distillation reads a logits "
                              "file (dump-logits); online distillation runs the teacher per batch")
        if self.augment and self.logits is not None:
            raise ConfigError("--augment with --logits: stored logits are of clean inputs, not of the "
                              "augmented views; distil online with --teacher instead")


@dataclass(frozen=True)
class DumpConfig:
    """A `dump-logits` run: the teacher's raw logits for its pool and the test split."""

    teacher: str = setting(None, "Teacher run dir.", "input", required=True)
    out: str = setting(None, "Logits file to write (.parquet).", "run", flag="--out/-o", required=True)
    dtype: str = setting("float32", "Stored precision: float16 or float32.", "training")
    topk: int | None = setting(
        None, "Store only the K largest logits, their ids and the row's log-sum-exp.", "training")
    extra_train: int = setting(
        0, "Also dump N fresh train samples after the pool (for students with κ > 1).", "training")
    data_dir: str | None = data_dir_setting()
    batch_size: int = setting(2048, "Inference batch size.", "run")
    device: str = device_setting()
    overwrite: bool = setting(False, "Replace an existing file.", "run", flag="--overwrite")

    def __post_init__(self):
        need(self.teacher is not None, "--teacher", "a teacher run dir", self.teacher)
        need(self.dtype in ("float16", "float32"), "--dtype", "float16 or float32", self.dtype)
        need(self.topk is None or self.topk >= 1, "--topk", "an integer ≥ 1", self.topk)
        need(self.extra_train >= 0, "--extra-train", "an integer ≥ 0", self.extra_train)
        need(self.batch_size >= 1, "--batch-size", "an integer ≥ 1", self.batch_size)
        need(self.out is not None and str(self.out).endswith(".parquet"), "--out",
             "a .parquet file name", self.out)


CKA_ESTIMATORS = ("linear", "rbf", "debiased", "minibatch")


@dataclass(frozen=True)
class CKAConfig:
    """Everything that determines a `cka` result. Settings of role `training` determine the
    values (an existing --out with the same ones is reused)."""

    run_a: str = setting(None, role="input", cli=False)
    run_b: str = setting(None, role="input", cli=False)
    out: str = setting(None, "Parquet file to write.", "run", flag="--out/-o")
    split: str = setting("test", "Split of the runs' dataset: test or train.", "training")
    max_samples: int | None = setting(
        None, "Use a seeded random subset of this many samples (default: the whole split).", "training")
    layers_a: tuple[str, ...] = setting(
        (), "RUN_A layer by module name (kdcli cka --list-layers RUN), or NAME:in for a module's "
            "input; repeatable or comma-separated. Default: the penultimate representation.",
        "training", flag="--layers-a")
    layers_b: tuple[str, ...] = setting((), "RUN_B layer, as --layers-a.", "training", flag="--layers-b")
    estimators: tuple[str, ...] = setting(
        ("linear", "debiased"), "linear, rbf, debiased (unbiased HSIC) or minibatch (streams; "
                                "constant memory); repeatable or comma-separated.", "training",
        flag="--estimator/-e")
    rbf_sigma: float = setting(1.0, "RBF bandwidth as a multiple of the median pairwise distance.",
                               "training")
    batch_size: int = setting(256, "Inference batch size, and the minibatch estimator's batch.", "training")
    bootstrap: int = setting(
        0, "Resamples for a 95% basic bootstrap CI (over samples; over batches for minibatch). "
           "0: none.", "training")
    seed: int = setting(0, "Seed of the sample order and of the bootstrap.", "training")
    data_dir: str | None = data_dir_setting()
    device: str = device_setting()
    threads: int | None = threads_setting()
    overwrite: bool = setting(False, "Replace an existing --out.", "run", flag="--overwrite")

    def __post_init__(self):
        from pathlib import Path

        for name in ("layers_a", "layers_b", "estimators"):
            object.__setattr__(self, name, tuple(dict.fromkeys(getattr(self, name))))
        need(self.out is not None, "--out", "the Parquet file to write (e.g. --out cka.parquet)", "")
        need(self.split in ("test", "train"), "--split", "test or train", self.split)
        need(len(self.estimators) > 0, "--estimator", "at least one estimator", "(none)")
        for e in self.estimators:
            need(e in CKA_ESTIMATORS, "--estimator", " / ".join(CKA_ESTIMATORS), e)
        unbiased = {"debiased", "minibatch"} & set(self.estimators)
        min_n = 4 if unbiased else 2
        need(self.max_samples is None or self.max_samples >= min_n, "--max-samples",
             f"at least {min_n}" + (f" (the {' and '.join(sorted(unbiased))} estimator needs 4)"
                                    if unbiased else ""), self.max_samples)
        need(self.batch_size >= (4 if "minibatch" in self.estimators else 1), "--batch-size",
             "at least 4 with the minibatch estimator (its unbiased HSIC needs 4 samples per batch)"
             if "minibatch" in self.estimators else "an integer ≥ 1", self.batch_size)
        need(math.isfinite(self.rbf_sigma) and self.rbf_sigma > 0, "--rbf-sigma", "a number > 0",
             self.rbf_sigma)
        need(self.bootstrap == 0 or self.bootstrap >= 2, "--bootstrap", "0 (none) or at least 2 resamples",
             self.bootstrap)
        need(self.threads is None or self.threads >= 1, "--threads", "an integer ≥ 1", self.threads)
        if Path(self.out).is_dir():
            raise ConfigError(f"--out {self.out}: is a directory; give a file name such as cka.parquet")

    def settings(self) -> dict:
        """The fields that determine the values (an existing --out with the same ones is reused)."""
        d = {k: getattr(self, k) for k in fields_with_role(CKAConfig, "training")}
        return json.loads(json.dumps(d))  # tuples as lists, as they come back from the file


COLLAPSE_SPLITS = ("seen", "train", "test")


@dataclass(frozen=True)
class CollapseConfig:
    """Everything that determines a `collapse` result. Settings of role `training` determine the
    values (an existing --out with the same ones and the same runs is reused)."""

    runs: tuple[str, ...] = setting((), role="input", cli=False)
    out: str = setting(None, "Parquet file to write (one row per run and split).", "run", flag="--out/-o",
                       required=True)
    splits: tuple[str, ...] = setting(
        ("seen", "test"), "seen (the samples the run trained on: its κ subset), train (the whole pool) "
                          "or test; repeatable or comma-separated.", "training", flag="--split")
    max_samples: int | None = setting(
        None, "Use a seeded random subset of this many samples of each split (default: all).", "training")
    seed: int = setting(0, "Seed of the --max-samples draw.", "training")
    batch_size: int = setting(1024, "Inference batch size.", "run")
    data_dir: str | None = data_dir_setting()
    device: str = device_setting()
    threads: int | None = threads_setting()
    overwrite: bool = setting(False, "Replace an existing --out.", "run", flag="--overwrite")

    def __post_init__(self):
        from pathlib import Path

        object.__setattr__(self, "splits", tuple(dict.fromkeys(self.splits)))
        need(self.out is not None and str(self.out).endswith(".parquet"), "--out",
             "a .parquet file name (e.g. --out collapse.parquet)", self.out)
        need(len(self.runs) > 0, "RUN", "at least one run directory", "(none)")
        need(len(self.splits) > 0, "--split", "at least one split", "(none)")
        for s in self.splits:
            need(s in COLLAPSE_SPLITS, "--split", " / ".join(COLLAPSE_SPLITS), s)
        need(self.max_samples is None or self.max_samples >= 2, "--max-samples", "at least 2", self.max_samples)
        need(self.batch_size >= 1, "--batch-size", "an integer ≥ 1", self.batch_size)
        need(self.threads is None or self.threads >= 1, "--threads", "an integer ≥ 1", self.threads)
        if Path(self.out).is_dir():
            raise ConfigError(f"--out {self.out}: is a directory; give a file name such as collapse.parquet")

    def settings(self) -> dict:
        """The fields that determine the values (an existing --out with the same ones is reused)."""
        d = {k: getattr(self, k) for k in fields_with_role(CollapseConfig, "training")}
        return json.loads(json.dumps(d))
