"""The training loop and the run-dir lifecycle: schedules, resume, pairing, guards."""

from __future__ import annotations

import hashlib
import io
import json
import math
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from kdcli.config import TrainConfig
from kdcli.errors import ArtifactError, ConfigError
from kdcli.stages import train
from kdcli.train.schedule import lr_at
from kdcli.train.state import saved_progress
from tests.conftest import InterruptAt, Interrupted, same_weights, tiny_config, weights

# ---------------------------------------------------------------------------- helpers


def snapshot(run_dir) -> dict[str, tuple[str, int]]:
    """sha256 and mtime of every file in a run dir."""
    return {p.name: (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
            for p in sorted(Path(run_dir).iterdir())}


def subset_indices(run_dir) -> list[int]:
    import pyarrow.parquet as pq

    return pq.read_table(Path(run_dir) / "subset.parquet").column("index").to_pylist()


def without_seconds(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def write_image_parquet(folder: Path, n_train: int = 48, n_test: int = 24) -> Path:
    """A tiny dataset in the Hugging Face image layout: 8x8 RGB PNGs, 3 classes."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    for split, n in (("train", n_train), ("test", n_test)):
        labels = np.arange(n) % 3
        pixels = rng.integers(0, 256, (n, 8, 8, 3), dtype=np.uint8)
        pixels[..., 0] = (labels * 100)[:, None, None]  # the red channel carries the class
        blobs = []
        for i, image in enumerate(pixels):
            buf = io.BytesIO()
            Image.fromarray(image).save(buf, format="PNG")
            blobs.append({"bytes": buf.getvalue(), "path": f"{split}/{i}.png"})
        table = pa.table({"img": pa.array(blobs, type=image_type),
                          "label": pa.array(labels, type=pa.int64())})
        table = table.replace_schema_metadata({b"classes": json.dumps(["r0", "r1", "r2"]).encode()})
        pq.write_table(table, folder / f"{split}.parquet")
    return folder


# ---------------------------------------------------------------------------- lr schedules


def reference_lr(step: int, total: int, per_epoch: int, *, peak: float, schedule: str,
                 warmup_epochs: float = 0.0, milestones=(0.5, 0.75), gamma: float = 0.1) -> float:
    """Linear warm-up to `peak` over round(warmup_epochs·per_epoch) steps, then the schedule
    over the remaining steps (step milestones are fractions of all steps)."""
    w = round(warmup_epochs * per_epoch)
    if step < w:
        return peak * (step + 1) / w
    if schedule == "cosine":
        return peak / 2 * (1 + math.cos(math.pi * (step - w) / (total - w)))
    if schedule == "step":
        return peak * gamma ** sum(1 for m in milestones if step >= m * total)
    return peak


@pytest.mark.parametrize("schedule,warmup", [("cosine", 0.0), ("cosine", 2.0), ("cosine", 0.25),
                                             ("step", 0.0), ("step", 1.0), ("constant", 0.0),
                                             ("constant", 3.0)])
def test_lr_schedule_matches_formula(schedule, warmup):
    cfg = TrainConfig(out="unused", lr=0.1, schedule=schedule, warmup_epochs=warmup)
    per_epoch, total = 10, 100
    got = [lr_at(cfg, s, total, per_epoch) for s in range(total)]
    want = [reference_lr(s, total, per_epoch, peak=0.1, schedule=schedule, warmup_epochs=warmup)
            for s in range(total)]
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=0)


def test_lr_schedule_landmarks():
    def lr(step, **kw):
        return lr_at(TrainConfig(out="unused", lr=0.2, **{"warmup_epochs": 0.0, **kw}), step, 100, 10)

    # cosine: peak at the first step, half at the middle, near zero at the end
    assert lr(0, schedule="cosine") == pytest.approx(0.2)
    assert lr(50, schedule="cosine") == pytest.approx(0.1)
    assert lr(99, schedule="cosine") == pytest.approx(0.1 * (1 + math.cos(math.pi * 0.99)))
    # warm-up of 2 epochs = 20 steps: 0.2/20, 0.2·2/20, …, reaching the peak at step 19
    assert lr(0, schedule="cosine", warmup_epochs=2) == pytest.approx(0.01)
    assert lr(9, schedule="cosine", warmup_epochs=2) == pytest.approx(0.1)
    assert lr(19, schedule="cosine", warmup_epochs=2) == pytest.approx(0.2)
    assert lr(20, schedule="cosine", warmup_epochs=2) == pytest.approx(0.2)
    assert lr(60, schedule="cosine", warmup_epochs=2) == pytest.approx(0.1)  # half-way through 80
    # step: ×0.1 at 50% and 75% of the steps
    assert [lr(s, schedule="step") for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [0.2, 0.2, 0.02, 0.02, 0.002, 0.002])
    assert lr(30, schedule="step", step_milestones=(0.3,), step_gamma=0.5) == pytest.approx(0.1)
    assert {lr(s, schedule="constant") for s in range(100)} == {0.2}


# ---------------------------------------------------------------------------- resume


@pytest.fixture(scope="module")
def image_dir(tmp_path_factory) -> Path:
    return write_image_parquet(tmp_path_factory.mktemp("images"))


RESUME_CASES = {  # 30 steps each
    "adamw": dict(optimizer="adamw", epochs=3),
    "sgd": dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=1e-4, epochs=3),
    "augment": dict(dataset="parquet-images", dataset_args={}, model="test_cnn", augment=True,
                    batch_size=16, epochs=10),
}


@pytest.mark.parametrize("case", list(RESUME_CASES))
def test_resume_gives_the_uninterrupted_result(case, tmp_path, image_dir):
    # Checkpoints every 7 steps fall inside epochs (10 or 3 steps long), evaluations every 5.
    kw = dict(RESUME_CASES[case], eval_every="5", checkpoint_every="7")
    if case == "augment":
        kw["data_dir"] = str(image_dir)
    whole = train.run(tiny_config(tmp_path / "whole", **kw))

    out = tmp_path / "interrupted"
    with pytest.raises(Interrupted):
        train.run(tiny_config(out, **kw), progress=InterruptAt(27))
    assert not (out / "run.json").exists()
    assert saved_progress(out)["step"] == 21

    resumed = train.run(tiny_config(out, resume=True, **kw))
    assert not resumed.skipped
    assert same_weights(whole.run_dir, out)
    assert [r["step"] for r in resumed.rows] == [5, 10, 15, 20, 25, 30]
    assert without_seconds(resumed.rows) == without_seconds(whole.rows)
    assert resumed.run["final"]["test_acc"] == whole.run["final"]["test_acc"]
    assert not (out / "checkpoint.safetensors").exists()

    if case == "augment":  # the augmented views really differ from the clean ones
        clean = train.run(tiny_config(tmp_path / "clean", **{**kw, "augment": False}))
        assert not same_weights(clean.run_dir, out)


@pytest.mark.parametrize("source", ["teacher", "defaults"])
def test_resume_with_settings_resolved_at_run_time(source, teacher_run, tmp_path):
    if source == "teacher":  # dataset, dataset args and model come from the teacher
        kw = dict(teacher=str(teacher_run), kappa=0.5, epochs=3)
    else:  # no --dataset / --model: mnist1d and cnn1d by default
        kw = dict(dataset=None, model=None, epochs=3)
    whole = train.run(tiny_config(tmp_path / "whole", **kw))
    out = tmp_path / "interrupted"
    with pytest.raises(Interrupted):
        train.run(tiny_config(out, **kw), progress=InterruptAt(12))
    train.run(tiny_config(out, resume=True, **kw))
    assert same_weights(whole.run_dir, out)


# ---------------------------------------------------------------------------- pairing, --steps


def test_same_seeds_give_identical_runs(tmp_path):
    kw = dict(kappa=0.5, epochs=2)
    a = train.run(tiny_config(tmp_path / "a", seed=3, subset_seed=5, **kw))
    b = train.run(tiny_config(tmp_path / "b", seed=3, subset_seed=5, **kw))
    other_seed = train.run(tiny_config(tmp_path / "c", seed=4, subset_seed=5, **kw))
    other_subset = train.run(tiny_config(tmp_path / "d", seed=3, subset_seed=6, **kw))

    assert same_weights(a.run_dir, b.run_dir)
    assert without_seconds(a.rows) == without_seconds(b.rows)
    assert not same_weights(a.run_dir, other_seed.run_dir)

    assert len(subset_indices(a.run_dir)) == 300
    assert subset_indices(a.run_dir) == subset_indices(b.run_dir) == subset_indices(other_seed.run_dir)
    assert a.run["subset"]["sha256"] == other_seed.run["subset"]["sha256"]
    assert subset_indices(other_subset.run_dir) != subset_indices(a.run_dir)
    assert other_subset.run["subset"]["sha256"] != a.run["subset"]["sha256"]


@pytest.mark.parametrize("steps,evaluated", [(25, [10, 20, 25]), (7, [7])])
def test_steps_sets_the_number_of_optimizer_steps(steps, evaluated, tmp_path):
    # 600 samples, batch 64: 10 steps per epoch (the last batch holds 24 samples)
    res = train.run(tiny_config(tmp_path / "r", steps=steps, epochs=None))
    assert [r["step"] for r in res.rows] == evaluated  # every 10 steps, and after the last
    assert [r["epoch"] for r in res.rows] == [s / 10 for s in evaluated]
    # the last logged lr is the cosine value at the last step (0-based steps - 1) of `steps`
    assert res.rows[-1]["lr"] == pytest.approx(0.5 * 3e-3 * (1 + math.cos(math.pi * (steps - 1) / steps)))


@pytest.mark.parametrize("dataset", ["mnist1d", "digits"])
def test_augment_needs_an_image_dataset(dataset, tmp_path):
    kw = {} if dataset == "mnist1d" else dict(dataset="digits", dataset_args={}, model="test_cnn")
    with pytest.raises(ConfigError, match="--augment"):
        train.run(tiny_config(tmp_path / "r", augment=True, epochs=1, **kw))


# ---------------------------------------------------------------------------- run-dir guards


@pytest.fixture
def interrupted(tmp_path) -> Path:
    out = tmp_path / "interrupted"
    with pytest.raises(Interrupted):
        train.run(tiny_config(out, epochs=3), progress=InterruptAt(20))
    return out


def test_interrupted_run_needs_resume_or_overwrite(interrupted):
    before = snapshot(interrupted)
    with pytest.raises(ArtifactError, match="--resume") as info:
        train.run(tiny_config(interrupted, epochs=3))
    assert "--overwrite" in str(info.value)
    assert snapshot(interrupted) == before


def test_resume_refuses_changed_settings(interrupted):
    before = snapshot(interrupted)
    with pytest.raises(ArtifactError, match="--resume") as info:
        train.run(tiny_config(interrupted, epochs=3, lr=1e-2, resume=True))
    changed = re.search(r"different settings \(([^)]*)\)", str(info.value))
    assert changed and changed.group(1) == "lr"  # exactly the changed field is named
    assert snapshot(interrupted) == before
    # the unchanged flags resume; --threads and --eval-batch-size may change
    res = train.run(tiny_config(interrupted, epochs=3, resume=True, eval_batch_size=7))
    assert [r["epoch"] for r in res.rows] == [1, 2, 3]


def test_overwrite_restarts_an_interrupted_run(interrupted):
    res = train.run(tiny_config(interrupted, epochs=3, overwrite=True))
    assert [r["epoch"] for r in res.rows] == [1, 2, 3]
    assert not (interrupted / "checkpoint.safetensors").exists()


def test_resume_without_a_run_starts_fresh(tmp_path):
    """A re-submitted slurm array passes --resume to every task: new points just start."""
    resumed = train.run(tiny_config(tmp_path / "new", resume=True))
    plain = train.run(tiny_config(tmp_path / "plain"))
    a, b = load_file(resumed.run_dir / "model.safetensors"), load_file(plain.run_dir / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_completed_run_with_other_settings_is_refused(tmp_path):
    done = train.run(tiny_config(tmp_path / "run"))
    before = (done.run_dir / "run.json").read_bytes()
    with pytest.raises(ArtifactError, match=r"other settings \(lr\)"):
        train.run(tiny_config(tmp_path / "run", lr=0.1))
    assert (done.run_dir / "run.json").read_bytes() == before
    assert train.run(tiny_config(tmp_path / "run")).skipped


def test_foreign_directory_is_refused(tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactError, match="not a kdcli run"):
        train.run(tiny_config(out, overwrite=True))
    assert [p.name for p in out.iterdir()] == ["notes.txt"]


@pytest.fixture
def completed(tmp_path) -> tuple[Path, dict]:
    res = train.run(tiny_config(tmp_path / "done", kappa=0.5))
    return res.run_dir, res.run


def test_completed_run_is_skipped_untouched(completed):
    out, run = completed
    before = snapshot(out)
    res = train.run(tiny_config(out, kappa=0.5))
    assert res.skipped
    assert res.run["run_id"] == run["run_id"]
    assert snapshot(out) == before


def test_overwrite_redoes_a_completed_run(completed):
    out, run = completed
    old_weights = weights(out)
    res = train.run(tiny_config(out, kappa=0.5, overwrite=True))
    assert not res.skipped
    assert res.run["run_id"] != run["run_id"]
    assert json.loads((out / "run.json").read_text())["run_id"] == res.run["run_id"]
    new_weights = weights(out)  # the same settings train the same weights again
    assert all(torch.equal(old_weights[k], new_weights[k]) for k in old_weights)


FAILURES = {
    "unknown model": (dict(model="no_such_model"), ConfigError, "--model"),
    "kappa > 1 on digits": (dict(dataset="digits", dataset_args={}, model="test_cnn", kappa=2.0),
                            ConfigError, "--kappa"),
    "teacher on another dataset": (dict(teacher="TEACHER", dataset="digits"), ConfigError, "--dataset"),
    "unknown dataset arg": (dict(dataset_args={"n_train": 600, "bogus": 1}), ConfigError, "bogus"),
}


@pytest.mark.parametrize("case", list(FAILURES))
def test_failed_overwrite_leaves_a_completed_run_intact(case, completed, teacher_run):
    out, _ = completed
    kw, error, needle = FAILURES[case]
    kw = {k: str(teacher_run) if v == "TEACHER" else v for k, v in kw.items()}
    before = snapshot(out)
    with pytest.raises(error, match=needle):
        train.run(tiny_config(out, overwrite=True, **kw))
    assert snapshot(out) == before


def test_bad_kappa_is_refused_before_anything_runs(tmp_path):
    for kappa in (0.0, -0.5, float("nan")):
        with pytest.raises(ConfigError, match="--kappa"):
            tiny_config(tmp_path / "r", kappa=kappa)
    with pytest.raises(ConfigError, match="--kappa"):
        tiny_config(tmp_path / "r", stage="train-teacher", kappa=0.5)
    assert not (tmp_path / "r").exists()


def test_same_teacher_by_relative_path_is_still_a_skip(teacher_run, tmp_path, monkeypatch):
    first = train.run(tiny_config(tmp_path / "s", teacher=str(teacher_run), kappa=0.2))
    monkeypatch.chdir(teacher_run.parent)
    again = train.run(tiny_config(tmp_path / "s", teacher=teacher_run.name, kappa=0.2))
    assert again.skipped and again.run["run_id"] == first.run["run_id"]


def test_another_stage_in_the_run_dir_is_refused(teacher_run, tmp_path):
    """A distill run dir is never skipped (or resumed) as a train-labels run, nor the reverse."""
    from kdcli.config import DistillConfig
    from kdcli.stages import distill

    kw = dict(teacher=str(teacher_run), kappa=0.5)
    kd = distill.run(DistillConfig(**{**tiny_config(tmp_path / "kd", **kw).to_dict(), "stage": "distill"}))
    with pytest.raises(ArtifactError, match=r"other settings \(.*stage"):
        train.run(tiny_config(kd.run_dir, **kw))
    out = tmp_path / "cut"
    with pytest.raises(Interrupted):
        distill.run(DistillConfig(**{**tiny_config(out, **kw).to_dict(), "stage": "distill",
                                     "checkpoint_every": "2"}), progress=InterruptAt(5))
    with pytest.raises(ArtifactError, match=r"different settings \(.*stage"):
        train.run(tiny_config(out, resume=True, checkpoint_every="2", **kw))


def test_epochs_overridden_by_steps_are_not_compared(tmp_path):
    """--steps overrides --epochs: a run made with another (unused) epochs value is the same run."""
    done = train.run(tiny_config(tmp_path / "r", steps=12, epochs=5))
    again = train.run(tiny_config(tmp_path / "r", steps=12, epochs=None))  # the recipe's epochs now
    assert again.skipped and again.run["run_id"] == done.run["run_id"]
    run = json.loads((done.run_dir / "run.json").read_text())  # a run written by kdcli 0.1
    run.update(format_version=1, config={**run["config"], "eval_every": 1})
    del run["task"], run["recipe"]
    (done.run_dir / "run.json").write_text(json.dumps(run))
    assert train.run(tiny_config(tmp_path / "r", steps=12)).skipped


def test_bf16_autocast_trains_close_to_fp32_and_pairs_with_nothing_else(tmp_path):
    """--precision bf16 on the CPU: autocast forward, float32 weights; a training setting."""
    import json

    from kdcli.report.pairs import pair_key

    runs = {p: train.run(tiny_config(tmp_path / p, stage="train-teacher", epochs=2, precision=p))
            for p in ("fp32", "bf16")}
    w32, w16 = weights(runs["fp32"].run_dir), weights(runs["bf16"].run_dir)
    assert all(w16[k].dtype == w32[k].dtype for k in w32)  # the weights stay float32
    assert not all(torch.equal(w16[k], w32[k]) for k in w32)  # the forward really ran in bf16
    rel = max(((w16[k] - w32[k]).norm() / w32[k].norm().clamp_min(1e-12)).item()
              for k in w32 if w32[k].is_floating_point())
    assert rel < 0.1  # bf16 rounding of a short run, not another training
    a32, a16 = (r.run["final"]["test_acc"] for r in runs.values())
    assert abs(a32 - a16) < 0.1
    run32, run16 = (json.loads((r.run_dir / "run.json").read_text()) for r in runs.values())
    student = {**run32, "stage": "train-labels", "teacher": {"run_id": "T"}}
    assert pair_key(student) != pair_key({**student, "config": run16["config"]})
    old = {**student, "config": {k: v for k, v in run32["config"].items() if k != "precision"}}
    assert pair_key(old) == pair_key(student)  # a run made before --precision ran at fp32


def test_a_run_made_before_precision_existed_counts_as_fp32(tmp_path):
    import json

    out = tmp_path / "old"
    train.run(tiny_config(out, stage="train-teacher", epochs=1))
    run = json.loads((out / "run.json").read_text())
    del run["config"]["precision"]  # as kdcli wrote it before --precision
    (out / "run.json").write_text(json.dumps(run))
    assert train.run(tiny_config(out, stage="train-teacher", epochs=1)).skipped
    with pytest.raises(ArtifactError, match=r"other settings \(precision\)"):
        train.run(tiny_config(out, stage="train-teacher", epochs=1, precision="bf16"))
