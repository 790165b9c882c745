"""A teacher from another distribution (--cross-dataset): refused unless asked for, the two
datasets' fingerprints recorded in run.json and checked when runs are read, and the teacher
run online on the student's own data."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from kdcli.config import DistillConfig
from kdcli.data import build_dataset
from kdcli.errors import ArtifactError, ConfigError
from kdcli.io.checkpoint import load_model
from kdcli.stages import distill, report, train
from tests.conftest import TINY_MNIST1D, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")
SHIFT = {"corr_noise": 0.6, "iid_noise": 0.05}


def _kd(out, teacher_run, **kw) -> DistillConfig:
    base = dict(out=str(out), teacher=str(teacher_run), kappa=0.5, steps=8, batch_size=64, lr=3e-3, threads=1,
                device="cpu", eval_every="0", checkpoint_every="0", tau=2.0)
    return DistillConfig(**{**base, **kw})


@pytest.fixture(scope="module")
def cross_pair(teacher_run, tmp_path_factory):
    root = tmp_path_factory.mktemp("cross")
    kd = distill.run(_kd(root / "kd", teacher_run, cross_dataset=True, dataset_args=dict(SHIFT)))
    lab = train.run(tiny_config(root / "lab", teacher=str(teacher_run), kappa=0.5, cross_dataset=True,
                                dataset_args=dict(SHIFT), steps=8, eval_every="0", checkpoint_every="0"))
    return root, kd.run_dir, lab.run_dir


def test_another_distribution_is_refused_without_the_flag(teacher_run, tmp_path):
    with pytest.raises(ConfigError, match="--dataset-arg: differs .*--cross-dataset"):
        distill.run(_kd(tmp_path / "kd", teacher_run, dataset_args=dict(SHIFT)))
    assert not (tmp_path / "kd").exists()


@pytest.mark.parametrize("kw,match", [
    ({"logits": "x.parquet"}, "--cross-dataset: needs --teacher and no --logits"),
    ({"teacher": None, "logits": "x.parquet"}, "--cross-dataset: needs --teacher"),
])
def test_flag_needs_an_online_teacher(teacher_run, tmp_path, kw, match):
    with pytest.raises(ConfigError, match=match):
        _kd(tmp_path / "kd", teacher_run, cross_dataset=True, **kw)


def test_the_teachers_own_dataset_is_refused(teacher_run, tmp_path):
    with pytest.raises(ConfigError, match="--cross-dataset: .*the teacher's own dataset"):
        distill.run(_kd(tmp_path / "kd", teacher_run, cross_dataset=True, dataset_args=dict(TINY_MNIST1D)))
    assert not (tmp_path / "kd").exists()


def test_the_link_is_recorded(teacher_run, cross_pair):
    _, kd_dir, lab_dir = cross_pair
    teacher = json.loads((teacher_run / "run.json").read_text())
    shifted = build_dataset("mnist1d", {**TINY_MNIST1D, **SHIFT})
    for d in (kd_dir, lab_dir):
        run = json.loads((d / "run.json").read_text())
        assert run["config"]["cross_dataset"] is True
        assert run["teacher"]["dataset_fingerprint"] == teacher["dataset"]["fingerprint"]
        assert run["dataset"]["fingerprint"] == shifted.fingerprint != teacher["dataset"]["fingerprint"]
        assert run["dataset"]["args"] == {**teacher["dataset"]["args"], **SHIFT}  # the teacher's, changed
        assert run["subset"]["n_pool"] == len(shifted.train()) and run["subset"]["size"] == 300


def test_the_teacher_runs_on_the_students_data(teacher_run, cross_pair):
    """Fidelity is measured on the shifted test split: agreement recomputed by hand."""
    _, kd_dir, _ = cross_pair
    x = build_dataset("mnist1d", {**TINY_MNIST1D, **SHIFT}).test().x
    teacher, _ = load_model(teacher_run / "model.safetensors")
    student, _ = load_model(kd_dir / "model.safetensors")
    with torch.no_grad():
        t, s = teacher.eval()(x).numpy(), student.eval()(x).numpy()
    y = build_dataset("mnist1d", {**TINY_MNIST1D, **SHIFT}).test().y.numpy()
    rows = pq.read_table(kd_dir / "metrics.parquet").to_pylist()
    assert rows[-1]["teacher_agreement"] == pytest.approx(float(np.mean(t.argmax(1) == s.argmax(1))), abs=1e-9)
    assert rows[-1]["teacher_acc"] == pytest.approx(float(np.mean(t.argmax(1) == y)), abs=1e-9)


def test_report_pairs_cross_runs_and_checks_the_link(teacher_run, cross_pair, tmp_path):
    root, kd_dir, _ = cross_pair
    res = report.run(report.ReportConfig(root=str(root)))
    (row,) = res.rows
    assert row["arm"] == "kd τ=2 α=1 online cross-dataset" and row["pairs"] == 1
    # the teacher's accuracy where the students are, not on its own data
    final = json.loads((kd_dir / "run.json").read_text())["final"]
    assert row["teacher_metric"] == pytest.approx(100 * final["teacher_acc"])
    own = json.loads((teacher_run / "run.json").read_text())["final"]["test_acc"]
    assert final["teacher_acc"] != own
    # a run.json edited to hide the cross-dataset choice is damaged, not counted
    tree = tmp_path / "tree"
    shutil.copytree(root, tree)
    path = tree / "kd" / "run.json"
    run = json.loads(path.read_text())
    run["config"]["cross_dataset"] = False
    path.write_text(json.dumps(run))
    res = report.run(report.ReportConfig(root=str(tree)))
    assert not res.rows
    (why,) = [w for _, w in res.scan.damaged]
    assert "not made with --cross-dataset" in why


def test_rerun_is_skipped_and_a_changed_choice_refused(teacher_run, cross_pair):
    _, kd_dir, _ = cross_pair
    again = distill.run(_kd(kd_dir, teacher_run, cross_dataset=True, dataset_args=dict(SHIFT)))
    assert again.skipped
    with pytest.raises(ArtifactError, match="other settings .*dataset_args"):
        distill.run(_kd(kd_dir, teacher_run, cross_dataset=True, dataset_args={"corr_noise": 0.9}))


def test_a_folder_dataset_of_another_distribution(tmp_path):
    """Folder datasets have no arguments that tell them apart: --data-dir names the other one;
    a copy of the teacher's own folder is refused by its fingerprint, before --out is touched."""
    from tests.test_training import write_image_parquet

    own = write_image_parquet(tmp_path / "A")
    other = write_image_parquet(tmp_path / "B", n_train=36)
    copy = tmp_path / "A-copy"
    shutil.copytree(own, copy)
    teacher = tmp_path / "t"
    train.run(tiny_config(teacher, stage="train-teacher", dataset="parquet-images", dataset_args={},
                          data_dir=str(own), model="test_cnn", batch_size=16, epochs=1))
    kw = dict(dataset="parquet-images", dataset_args={}, batch_size=16, kappa=1.0)
    res = distill.run(_kd(tmp_path / "kd", teacher, cross_dataset=True, data_dir=str(other), **kw))
    run = json.loads((res.run_dir / "run.json").read_text())
    assert run["subset"]["n_pool"] == 36 and run["dataset"]["data_dir"] == str(other)
    assert run["teacher"]["dataset_fingerprint"] != run["dataset"]["fingerprint"]
    with pytest.raises(ConfigError, match="teacher's own dataset"):  # the teacher's folder itself
        distill.run(_kd(tmp_path / "kd2", teacher, cross_dataset=True, **kw))
    with pytest.raises(ConfigError, match="teacher's own .*same fingerprint"):
        distill.run(_kd(tmp_path / "kd3", teacher, cross_dataset=True, data_dir=str(copy), **kw))
    assert not (tmp_path / "kd2").exists() and not (tmp_path / "kd3").exists()


def test_a_rerun_after_the_teachers_pool_changed_is_refused(tmp_path):
    """The run records the full arguments (the teacher's, changed), so a teacher retrained on
    another pool does not let a stale cross-dataset student count as done."""
    teacher = tmp_path / "t"
    train.run(tiny_config(teacher, stage="train-teacher", epochs=1))
    cfg = _kd(tmp_path / "kd", teacher, cross_dataset=True, dataset_args=dict(SHIFT))
    distill.run(cfg)
    train.run(tiny_config(teacher, stage="train-teacher", epochs=1, overwrite=True,
                          dataset_args={"n_train": 400, "n_test": 300}))
    with pytest.raises(ArtifactError, match="other settings .*dataset_args"):
        distill.run(cfg)


def test_the_link_check_catches_a_flag_without_a_difference(cross_pair, tmp_path):
    root, _, _ = cross_pair
    tree = tmp_path / "tree"
    shutil.copytree(root, tree)
    path = tree / "lab" / "run.json"
    run = json.loads(path.read_text())
    run["teacher"]["dataset_fingerprint"] = run["dataset"]["fingerprint"]
    path.write_text(json.dumps(run))
    res = report.run(report.ReportConfig(root=str(tree)))
    (why,) = [w for _, w in res.scan.damaged]
    assert "says --cross-dataset, but its teacher was trained on the same dataset" in why
