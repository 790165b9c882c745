"""Every flag of every command reaches the config its stage receives, and every default the
command line shows is the config's own (the options are built from the config fields, and these
tests fail when a flag stops reaching its setting). Nothing trains: the stages are replaced."""

from __future__ import annotations

import dataclasses

import pytest
from typer.testing import CliRunner

from kdcli.cli import build
from kdcli.cli.main import app
from kdcli.config import CKAConfig, CollapseConfig, DistillConfig, DumpConfig, TrainConfig


class Captured(Exception):
    def __init__(self, cfg):
        self.cfg = cfg


def _capture(cfg, *args, **kw):
    raise Captured(cfg)


COMMANDS = {  # command: (config class, stage, the module whose run() is replaced, base arguments)
    "train-teacher": (TrainConfig, "train-teacher", "train", ["--out", "R"]),
    "train-labels": (TrainConfig, "train-labels", "train", ["--out", "R"]),
    "distill": (DistillConfig, "distill", "distill", ["--out", "R", "--teacher", "T"]),
    "dump-logits": (DumpConfig, None, "dump_logits", ["--teacher", "T", "--out", "l.parquet"]),
    "cka": (CKAConfig, None, "cka", ["A", "B", "--out", "c.parquet"]),
    "collapse": (CollapseConfig, None, "collapse", ["A", "--out", "c.parquet"]),
}

# One non-default value per option: the arguments typed, and the value the config must hold.
VALUES = {
    "out": (["--out", "S"], "S"),
    "dataset": (["--dataset", "digits"], "digits"),
    "dataset_args": (["--dataset-arg", "n_train=50", "--dataset-arg", "name=x"], {"n_train": 50, "name": "x"}),
    "data_dir": (["--data-dir", "somewhere"], "somewhere"),
    "model": (["--model", "mlp"], "mlp"),
    "model_args": (["--model-arg", "channels=3"], {"channels": 3}),
    "teacher": (["--teacher", "T2"], "T2"),
    "logits": (["--logits", "L.parquet"], "L.parquet"),
    "kappa": (["--kappa", "0.25"], 0.25),
    "subset_seed": (["--subset-seed", "7"], 7),
    "seed": (["--seed", "3"], 3),
    "epochs": (["--epochs", "5"], 5),
    "steps": (["--steps", "11"], 11),
    "batch_size": (["--batch-size", "32"], 32),
    "optimizer": (["--optimizer", "sgd"], "sgd"),
    "lr": (["--lr", "0.5"], 0.5),
    "momentum": (["--momentum", "0.5"], 0.5),
    "weight_decay": (["--weight-decay", "0.01"], 0.01),
    "schedule": (["--schedule", "step"], "step"),
    "warmup_epochs": (["--warmup-epochs", "1.5"], 1.5),
    "label_smoothing": (["--label-smoothing", "0.1"], 0.1),
    "match_smoothing_tau": (["--match-smoothing-tau", "2"], 2.0),
    "grad_clip": (["--grad-clip", "1"], 1.0),
    "augment": (["--augment"], True),
    "precision": (["--precision", "bf16"], "bf16"),
    "compile": (["--compile"], True),
    "cross_dataset": (["--cross-dataset"], True),
    "eval_every": (["--eval-every", "250"], "250"),
    "checkpoint_every": (["--checkpoint-every", "5m"], "5m"),
    "eval_batch_size": (["--eval-batch-size", "64"], 64),
    "device": (["--device", "cpu"], "cpu"),
    "threads": (["--threads", "1"], 1),
    "overwrite": (["--overwrite"], True),
    "resume": (["--resume"], True),
    "tau": (["--tau", "2"], 2.0),
    "alpha": (["--alpha", "0.5"], 0.5),
    "kd_backend": (["--kd-backend", "eager"], "eager"),
    "topk_tail": (["--topk-tail", "bucket"], "bucket"),
    # dump-logits
    "dtype": (["--dtype", "float16"], "float16"),
    "topk": (["--topk", "3"], 3),
    "extra_train": (["--extra-train", "9"], 9),
    # cka
    "split": (["--split", "train"], "train"),
    "max_samples": (["--max-samples", "50"], 50),
    "layers_a": (["--layers-a", "features.0,features", "--layers-a", "head"], ("features.0", "features", "head")),
    "layers_b": (["--layers-b", "head"], ("head",)),
    "estimators": (["-e", "rbf", "--estimator", "minibatch"], ("rbf", "minibatch")),
    "rbf_sigma": (["--rbf-sigma", "0.5"], 0.5),
    "bootstrap": (["--bootstrap", "10"], 10),
    # collapse
    "splits": (["--split", "seen,train", "--split", "test"], ("seen", "train", "test")),
}
# Per command, a value its base arguments would otherwise clash with.
OVERRIDES = {("dump-logits", "out"): (["--out", "other.parquet"], "other.parquet"),
             ("collapse", "out"): (["--out", "other.parquet"], "other.parquet"),
             ("train-labels", "cross_dataset"): (["--cross-dataset", "--teacher", "T"], True)}


def invoke(monkeypatch, command: str, args: list[str]):
    import importlib

    module = importlib.import_module(f"kdcli.stages.{COMMANDS[command][2]}")
    monkeypatch.setattr(module, "run", _capture)
    result = CliRunner().invoke(app, [command, *args])
    assert isinstance(result.exception, Captured), result.output
    return result.exception.cfg


def option_names(command: str) -> list[str]:
    cls, stage, _, _ = COMMANDS[command]
    return [f.name for f in build.option_fields(cls, stage)]


@pytest.mark.parametrize("command", list(COMMANDS))
def test_defaults_are_the_configs(command, monkeypatch):
    cls, stage, _, base = COMMANDS[command]
    cfg = invoke(monkeypatch, command, base)
    given = {"train-teacher": dict(out="R", stage=stage), "train-labels": dict(out="R", stage=stage),
             "distill": dict(out="R", teacher="T"), "dump-logits": dict(teacher="T", out="l.parquet"),
             "cka": dict(run_a="A", run_b="B", out="c.parquet"),
             "collapse": dict(runs=("A",), out="c.parquet")}[command]
    assert cfg == cls(**given)
    # and every option's declared default is the field's (a repeatable option's None: the field's)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for param in build.option_parameters(cls, stage):
        field = fields[param.name]
        if param.default is param.empty:
            assert field.metadata["required"], param.name  # required on the command line
        elif field.default is dataclasses.MISSING or isinstance(field.default, tuple):
            assert param.default is None, param.name
        else:
            assert param.default == field.default, param.name


def without(args: list[str], flag: str) -> list[str]:
    """args less `flag VALUE`."""
    i = args.index(flag) if flag in args else None
    return args if i is None else args[:i] + args[i + 2:]


@pytest.mark.parametrize("command,name", [(c, n) for c in COMMANDS for n in option_names(c)])
def test_every_flag_reaches_its_setting(command, name, monkeypatch):
    args, expected = OVERRIDES.get((command, name), VALUES[name])
    base = without(COMMANDS[command][3], args[0]) if args[0].startswith("--") else COMMANDS[command][3]
    cfg = invoke(monkeypatch, command, [*base, *args])
    assert getattr(cfg, name) == expected


def test_every_option_has_a_value_here():
    for command in COMMANDS:
        missing = sorted(set(option_names(command)) - set(VALUES))
        assert not missing, f"{command}: no test value for {missing}"


def test_grid_point_options(monkeypatch):
    cfg = invoke(monkeypatch, "train-labels", ["--out", "R", "--grid", "kappa=0.1,0.2", "--grid", "seed=0,1",
                                               "--task-index", "3"])
    assert (cfg.kappa, cfg.seed, cfg.out) == (0.2, 1, "R/kappa0.2_seed1")
    res = CliRunner().invoke(app, ["distill", "--out", "R", "--teacher", "T", "--grid", "tau=1,2,4",
                                   "--grid", "kappa=0.1,1", "--print-grid"])
    assert res.exit_code == 0 and res.stdout.strip() == "6"
