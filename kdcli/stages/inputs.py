"""A training stage's inputs: first resolved (names, arguments, recipe; no data read), then
prepared (dataset, κ subset, device, model), each checked before --out is touched.

Resolution is cheap so that the run-dir decision (skip, resume) can compare the fully
resolved settings with the ones a run was made with.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from kdcli.config import TrainConfig
from kdcli.data import Dataset, Subset, build_dataset, dataset_from_description, kappa_subset
from kdcli.data.base import Split
from kdcli.errors import ArtifactError, ConfigError
from kdcli.models import build_model, resolve_model_args
from kdcli.task import Task
from kdcli.teacher import TeacherRows, TeacherSource, resolve_teacher
from kdcli.train.device import use_device
from kdcli.train.loop import Evaluator
from kdcli.train.recipes import apply_recipe

DEFAULT_DATASET, DEFAULT_MODEL = "mnist1d", "cnn1d"


@dataclass
class Resolved:
    """The settings with every default filled in: from the teacher, then the recipe."""

    cfg: TrainConfig
    teacher: TeacherSource | None
    recipe: dict  # {"name", "applied"}: what run.json records
    dataset: Dataset | None = None  # built (lazily: no data read) when there is no teacher


def resolve(cfg: TrainConfig) -> Resolved:
    """Dataset and model (the teacher's, when --teacher or --logits is given), their arguments
    and the recipe's defaults. Reads the teacher's run.json / the logits file's metadata only."""
    teacher = resolve_teacher(cfg.teacher, cfg.logits)
    dataset = None
    if teacher is not None and cfg.cross_dataset:
        dataset = cross_dataset(cfg, teacher)
        # the full arguments (the teacher's, changed): a rerun after the teacher's pool changed
        # is compared with what this run was made with
        cfg = cfg.replace(dataset=dataset.name, dataset_args=dataset.args, data_dir=dataset.data_dir,
                          model=cfg.model or teacher.model_name)
        if cfg.model == teacher.model_name and not cfg.model_args:
            cfg = cfg.replace(model_args={k: v for k, v in teacher.model_args.items()
                                          if k not in ("num_classes", "input_shape")})
    elif teacher is None:
        dataset = build_dataset(cfg.dataset or DEFAULT_DATASET, cfg.dataset_args, cfg.data_dir)
        # dataset_args stay as given (run.json's `dataset` holds the full ones), so runs made
        # before are compared with the arguments they were given
        cfg = cfg.replace(dataset=dataset.name, model=cfg.model or DEFAULT_MODEL)
    else:
        tdata = teacher.dataset
        if cfg.dataset not in (None, tdata["name"]):
            raise ConfigError(f"--dataset {cfg.dataset}: the teacher ({teacher.where}) was trained on "
                              f"{tdata['name']!r}; a student's κ must refer to the teacher's pool (add "
                              "--cross-dataset to distil across datasets on purpose)")
        if cfg.dataset_args and cfg.dataset_args != {k: tdata["args"].get(k) for k in cfg.dataset_args}:
            raise ConfigError(f"--dataset-arg: differs from the teacher's dataset arguments {tdata['args']} "
                              "(add --cross-dataset to distil across datasets on purpose)")
        cfg = cfg.replace(dataset=tdata["name"], dataset_args=tdata["args"],
                          data_dir=cfg.data_dir or tdata.get("data_dir"),
                          model=cfg.model or teacher.model_name)
        if cfg.model == teacher.model_name and not cfg.model_args:
            cfg = cfg.replace(model_args={k: v for k, v in teacher.model_args.items()
                                          if k not in ("num_classes", "input_shape")})
    cfg, recipe = apply_recipe(cfg, cfg.dataset, cfg.model)
    return Resolved(cfg, teacher, recipe, dataset)


def cross_dataset(cfg: TrainConfig, teacher: TeacherSource) -> Dataset:
    """The student's dataset under --cross-dataset (no data read): another dataset than the
    teacher's, with the teacher's classes and input shape. Of the teacher's dataset name,
    --dataset-arg changes the teacher's arguments (corr_noise=0.5: the teacher's data, noisier)
    and --data-dir its folder (a copy of another distribution in the same format); prepare()
    checks the data are not the teacher's by fingerprint."""
    tdata = teacher.dataset
    name = cfg.dataset or tdata["name"]
    same_name = name == tdata["name"]
    args = {**tdata["args"], **cfg.dataset_args} if same_name else dict(cfg.dataset_args)
    data_dir = cfg.data_dir or (tdata.get("data_dir") if same_name else None)
    dataset = build_dataset(name, args, data_dir)
    if same_name and dataset.args == tdata["args"] and _same_folder(data_dir, tdata.get("data_dir")):
        where = f" in {data_dir}" if data_dir else ""
        raise ConfigError(f"--cross-dataset: --dataset, --dataset-arg and --data-dir give the teacher's own dataset "
                          f"({tdata['name']} {tdata['args']}{where}); name the other one, or drop --cross-dataset")
    if dataset.num_classes != tdata["num_classes"] or list(dataset.input_shape) != list(tdata["input_shape"]):
        raise ConfigError(f"--cross-dataset: dataset {dataset.name!r} has {dataset.num_classes} classes of "
                          f"shape {list(dataset.input_shape)}, the teacher's ({teacher.where}) "
                          f"{tdata['num_classes']} of shape {list(tdata['input_shape'])}; they must match")
    return dataset


def _same_folder(a: str | None, b: str | None) -> bool:
    import os

    return (a is None and b is None) or (a is not None and b is not None and os.path.realpath(a) == os.path.realpath(b))


@dataclass
class Prepared:
    """A training stage's inputs, all built and checked."""

    cfg: TrainConfig
    dataset: Dataset
    teacher: TeacherSource | None
    recipe: dict
    subset: Subset
    model: torch.nn.Module
    model_args: dict
    device: torch.device
    _teacher_model: torch.nn.Module | None = field(default=None, repr=False)

    @property
    def task(self) -> Task:
        return self.dataset.task

    def teacher_rows(self, split_name: str, split: Split) -> TeacherRows:
        """The teacher's logits for `split`, batch by batch (one teacher network when online)."""
        if self.teacher is None:
            raise ConfigError("this needs the teacher: give --teacher or --logits")
        if self.teacher.logits is None and self._teacher_model is None:
            self._teacher_model = self.teacher.load_model(self.device)
        return self.teacher.rows(split_name, split, self.device, self._teacher_model)

    def evaluator(self) -> Evaluator:
        """The test split and the dataset's further test splits (out-of-distribution text), with
        the teacher's rows for fidelity when there is a teacher (a bad logits file fails here,
        before --out is touched)."""
        splits = {"": ("test", self.dataset.test()),
                  **{name: (name, split) for name, split in self.dataset.extra_tests().items()}}
        sets = {prefix: (split, self.teacher_rows(name, split) if self.teacher is not None else None)
                for prefix, (name, split) in splits.items()}
        return Evaluator(sets, self.task, self.dataset.model_input, self.cfg.eval_batch_size, self.device,
                         self.dataset.token_bytes)


def prepare(r: Resolved) -> Prepared:
    """Build and check everything a training stage needs; nothing is written."""
    cfg, teacher = r.cfg, r.teacher
    if r.dataset is not None:  # no teacher, or --cross-dataset
        dataset = r.dataset
        if cfg.cross_dataset and dataset.fingerprint == teacher.dataset["fingerprint"]:
            raise ConfigError(f"--cross-dataset: the data at {dataset.data_dir or 'the generator'} are the "
                              f"teacher's own (the same fingerprint); name another dataset, or drop --cross-dataset")
    else:
        dataset = dataset_from_description(teacher.dataset, cfg.data_dir, teacher.where)
        stored = teacher.logits_meta["num_classes"] if teacher.logits_meta else teacher.dataset["num_classes"]
        if stored != dataset.num_classes:
            raise ArtifactError(f"{teacher.where}: holds {stored} classes, the dataset "
                                f"{dataset.name!r} has {dataset.num_classes}")
    if cfg.augment and not dataset.image:
        raise ConfigError(f"--augment: dataset {dataset.name!r} is not an image dataset; random crop "
                          "and flip apply to image datasets (cifar10, cifar100, parquet-images)")
    subset = kappa_subset(dataset, cfg.kappa, cfg.subset_seed)
    device = use_device(cfg.device, cfg.threads)
    check_precision(cfg, device)
    model, model_args = make_model(cfg, dataset, device)
    check_forward(model, dataset, subset, device, cfg.model)
    return Prepared(cfg, dataset, teacher, r.recipe, subset, model, model_args, device)


def check_precision(cfg: TrainConfig, device: torch.device) -> None:
    """--precision and --compile on this device, before --out is touched."""
    if cfg.precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"--precision fp16: needs a CUDA device (this run is on {device.type}; autocast "
                          "there supports bf16)")
    if cfg.precision == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise ConfigError(f"--precision bf16: {torch.cuda.get_device_name(device)} has no bfloat16; use fp16")
    if cfg.compile:
        try:  # torch.compile builds lazily: a missing compiler would show only at the first step
            torch.compile(lambda t: t * 2 + 1)(torch.ones(4, device=device))
        except Exception as exc:  # noqa: BLE001  inductor raises many kinds
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
            raise ConfigError(f"--compile: torch.compile cannot build on this machine ({first}); drop "
                              "--compile") from None


def make_model(cfg: TrainConfig, dataset: Dataset, device: torch.device) -> tuple[torch.nn.Module, dict]:
    """Build the model with weights drawn from --seed, identically for paired runs."""
    args = resolve_model_args(cfg.model, dataset.task.outputs, dataset.input_shape, cfg.model_args)
    torch.manual_seed(cfg.seed)
    model = build_model(cfg.model, **args).to(device)
    if device.type == "cuda" and any(isinstance(m, torch.nn.Conv2d) for m in model.modules()):
        model = model.to(memory_format=torch.channels_last)  # tensor cores' layout; same values
    return model, args


def check_forward(model: torch.nn.Module, dataset: Dataset, subset: Subset, device: torch.device,
                  name: str) -> None:
    """One forward pass on two samples, so a model that cannot take this data fails before --out is touched."""
    x = dataset.model_input(subset.split.x[:2].to(device))
    try:
        with torch.no_grad():
            out = model.eval()(x)
    except RuntimeError as exc:
        raise ConfigError(f"--model {name}: cannot take {dataset.name} inputs of shape "
                          f"{tuple(dataset.input_shape)} ({str(exc).splitlines()[0]})") from None
    finally:
        model.train()
    if out.shape[-1] != dataset.task.outputs:
        raise ConfigError(f"--model {name}: gives {out.shape[-1]} outputs per row for "
                          f"{dataset.task.outputs} classes")
