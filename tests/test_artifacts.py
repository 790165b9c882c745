"""The run-dir contract: self-describing files, provenance, hashes, and refusing bad inputs."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import socket
from importlib.metadata import version
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from kdcli.errors import ArtifactError, ConfigError
from kdcli.io.checkpoint import load_model
from kdcli.stages import train
from tests.conftest import tiny_config

FILES = ("model.safetensors", "metrics.parquet", "subset.parquet", "predictions.safetensors")


def sha256(path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def header(path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return f.metadata()


def parquet_meta(path) -> dict[str, str]:
    import pyarrow.parquet as pq

    return {k.decode(): v.decode() for k, v in pq.read_schema(path).metadata.items()}


def read_rows(path) -> list[dict]:
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


def load_test_split(run: dict):
    """The dataset a run recorded, rebuilt from its name and arguments."""
    from kdcli.data import build_dataset

    data = run["dataset"]
    args = {k: v for k, v in data["args"].items() if k != "generator"}
    return build_dataset(data["name"], args, data["data_dir"]).test()


@pytest.fixture(scope="module")
def student(teacher_run, tmp_path_factory):
    """A train-labels run from the tiny teacher, under a fake slurm array task; the trained
    model object is captured from the loop so the checkpoint can be compared with it."""
    import kdcli.train.loop as loop

    captured = {}
    real_fit = loop.fit

    def fit(cfg, model, *args, **kw):
        captured["model"] = model
        return real_fit(cfg, model, *args, **kw)

    out = tmp_path_factory.mktemp("student") / "run"
    with pytest.MonkeyPatch.context() as mp:
        for key in [k for k in os.environ if k.startswith("SLURM_")]:
            mp.delenv(key)
        mp.setenv("SLURM_ARRAY_TASK_ID", "7")
        mp.setenv("SLURM_JOB_ID", "4242")
        mp.setattr(loop, "fit", fit)
        res = train.run(tiny_config(out, teacher=str(teacher_run), kappa=0.5, epochs=2, seed=1,
                                    eval_every="5"))
    run = json.loads((out / "run.json").read_text())
    return SimpleNamespace(dir=out, run=run, rows=res.rows, model=captured["model"])


# ---------------------------------------------------------------------------- the files


def test_run_dir_layout(student):
    names = sorted(p.name for p in student.dir.iterdir())
    # no checkpoint or temporary files left; the (empty) lock file of the writing process stays
    assert names == sorted((*FILES, "run.json", ".kdcli-lock"))


def test_model_header_describes_the_model(student):
    meta = header(student.dir / "model.safetensors")
    run = student.run
    assert meta["format_version"]
    assert meta["run_id"] == run["run_id"]
    assert meta["model_name"] == run["model"]["name"] == "test_cnn1d"
    assert json.loads(meta["model_args"]) == run["model"]["args"]
    assert json.loads(meta["model_args"]) == {"num_classes": 10, "input_shape": [1, 40]}
    assert meta["dataset_fingerprint"] == run["dataset"]["fingerprint"]


def test_every_artifact_carries_format_fingerprint_and_run_id(student):
    for name in FILES:
        path = student.dir / name
        meta = header(path) if name.endswith(".safetensors") else parquet_meta(path)
        assert meta.get("format_version"), name
        assert meta.get("run_id") == student.run["run_id"], name
        assert meta.get("dataset_fingerprint") == student.run["dataset"]["fingerprint"], name


@pytest.mark.parametrize("name", ["model.safetensors", "metrics.parquet", "predictions.safetensors"])
def test_model_outputs_record_model_and_input_hashes(student, teacher_run, name):
    path = student.dir / name
    meta = header(path) if name.endswith(".safetensors") else parquet_meta(path)
    assert meta.get("model_name") == "test_cnn1d"
    assert json.loads(meta.get("model_args", "null")) == student.run["model"]["args"]
    teacher_sha = sha256(teacher_run / "model.safetensors")
    assert any(teacher_sha in value for value in meta.values())


def test_load_model_rebuilds_the_trained_model(student):
    model, info = load_model(student.dir / "model.safetensors")
    assert info["run_id"] == student.run["run_id"]
    assert info["model_name"] == "test_cnn1d"
    assert info["num_classes"] == 10
    x = load_test_split(student.run).x
    trained = student.model.eval()
    with torch.no_grad():
        assert torch.equal(model.eval()(x), trained(x))


def test_metrics_table(student):
    rows = read_rows(student.dir / "metrics.parquet")
    for col in ("epoch", "step", "train_loss", "test_loss", "test_acc", "lr", "seconds"):
        assert col in rows[0], col
    assert [r["epoch"] for r in rows] == [1, 2]
    assert [r["step"] for r in rows] == [5, 10]  # 300 samples, batch 64: 5 steps an epoch
    assert all(r["seconds"] >= 0 for r in rows)
    assert rows[-1] == student.run["final"]
    assert [r["test_acc"] for r in rows] == [r["test_acc"] for r in student.rows]


def test_final_accuracy_and_loss_recomputed_from_the_checkpoint(student):
    model, _ = load_model(student.dir / "model.safetensors")
    test = load_test_split(student.run)
    with torch.no_grad():
        logits = model.eval()(test.x).double().numpy()
    y = test.y.numpy()
    assert len(y) == 300
    acc = float(np.mean(np.argmax(logits, axis=1) == y))
    # float64 cross-entropy: logsumexp(z) - z_y
    m = logits.max(axis=1, keepdims=True)
    lse = (m + np.log(np.exp(logits - m).sum(axis=1, keepdims=True)))[:, 0]
    loss = float(np.mean(lse - logits[np.arange(len(y)), y]))
    final = read_rows(student.dir / "metrics.parquet")[-1]
    assert final["test_acc"] == pytest.approx(acc, abs=1e-6)
    assert final["test_loss"] == pytest.approx(loss, rel=1e-5)


def test_predictions_file_holds_the_final_models_test_log_probabilities(student):
    from kdcli.io.predictions import read_predictions

    model, _ = load_model(student.dir / "model.safetensors")
    test = load_test_split(student.run)
    with torch.no_grad():
        logits = model.eval()(test.x).double().numpy()
    m = logits.max(axis=1, keepdims=True)
    expected = logits - m - np.log(np.exp(logits - m).sum(axis=1, keepdims=True))  # float64 log-softmax
    p = read_predictions(student.dir / "predictions.safetensors")
    assert p.log_probs.dtype == np.float16 and p.log_probs.shape == (300, 10)
    np.testing.assert_allclose(p.log_probs.astype(np.float64), expected, rtol=2e-3, atol=2e-3)
    assert p.targets.tolist() == test.y.tolist()
    assert p.rows.tolist() == list(range(300))
    assert p.meta["rows"] == "every test sample" and p.meta["split"] == "test"


def test_artifact_hashes(student):
    for name in FILES:
        assert student.run["artifacts"][name] == sha256(student.dir / name), name


def test_subset_file(student, teacher_run):
    import pyarrow.parquet as pq

    table = pq.read_table(student.dir / "subset.parquet")
    idx = np.asarray(table.column("index").to_pylist())
    assert table.column("index").type == "int64"
    sub = student.run["subset"]
    assert len(idx) == sub["size"] == 300  # ⌊0.5 · 600⌋
    assert sub["n_pool"] == 600 and sub["kappa"] == 0.5
    assert len(set(idx.tolist())) == 300 and idx.min() >= 0 and idx.max() < 600
    # the recorded hash covers dtype, shape and the little-endian int64 ids, in subset order
    h = hashlib.sha256(f"<i8{idx.shape}".encode())
    h.update(idx.astype("<i8").tobytes())
    assert sub["sha256"] == h.hexdigest() == parquet_meta(student.dir / "subset.parquet")["sha256"]
    # stratified: every class of the teacher's pool is in the subset
    from kdcli.data import build_dataset

    pool_y = build_dataset("mnist1d", {"n_train": 600, "n_test": 300}).train().y.numpy()
    assert set(pool_y[idx].tolist()) == set(range(10))


def test_run_json(student, teacher_run):
    run = student.run
    teacher = json.loads((teacher_run / "run.json").read_text())
    assert run["format"] == "kdcli-run" and run["format_version"] == 2
    assert run["stage"] == "train-labels"
    cfg = run["config"]
    assert cfg["kappa"] == 0.5 and cfg["seed"] == 1 and cfg["subset_seed"] == 0
    assert cfg["teacher"] == str(teacher_run)
    assert cfg["dataset"] == "mnist1d" and cfg["model"] == "test_cnn1d"  # resolved, not None
    assert run["final"]["epoch"] == 2
    assert run["teacher"]["run_id"] == teacher["run_id"]
    # the task the dataset declares, and the recipe: every recipe setting was given explicitly
    # by tiny_config except these, which the fallback recipe filled in
    assert run["task"]["kind"] == "classification" and run["task"]["outputs"] == 10
    assert run["task"]["primary"] == "test_acc" and run["task"]["subsets"] == "stratified"
    assert run["recipe"] == {"name": "default", "applied": {"optimizer": "adamw", "weight_decay": 0.0,
                                                            "schedule": "cosine", "warmup_epochs": 0.0}}

    prov = run["provenance"]
    assert isinstance(prov["command"], list)
    assert prov["versions"]["torch"] == version("torch")
    assert "kdcli" in prov["versions"] and "python" in prov["versions"]
    assert "git_sha" in prov
    assert prov["host"] == socket.gethostname()
    started = dt.datetime.fromisoformat(prov["started"])
    finished = dt.datetime.fromisoformat(prov["finished"])
    assert started.tzinfo is not None and started <= finished
    assert prov["seeds"] == {"seed": 1, "subset_seed": 0}
    assert prov["inputs"]["teacher_model"] == sha256(teacher_run / "model.safetensors")


def test_slurm_ids_are_recorded(student):
    assert student.run["provenance"]["slurm"] == {"SLURM_ARRAY_TASK_ID": "7", "SLURM_JOB_ID": "4242"}


def test_student_takes_dataset_and_model_from_the_teacher(student, teacher_run, tmp_path):
    teacher = json.loads((teacher_run / "run.json").read_text())
    run = student.run
    assert run["dataset"]["fingerprint"] == teacher["dataset"]["fingerprint"]
    assert run["dataset"]["name"] == teacher["dataset"]["name"]
    assert run["subset"]["n_pool"] == teacher["dataset"]["n_train"] == 600
    assert run["model"] == {**teacher["model"]}  # same name, arguments and size
    # an explicit --model replaces the teacher's
    other = train.run(tiny_config(tmp_path / "mlp", teacher=str(teacher_run), kappa=0.2,
                                  model="test_mlp", epochs=1))
    assert other.run["model"]["name"] == "test_mlp"
    assert other.run["subset"]["size"] == 120


def test_teacher_trained_on_a_subset_defines_n_t(student, tmp_path):
    from kdcli.errors import KdcliError

    try:
        res = train.run(tiny_config(tmp_path / "s", teacher=str(student.dir), kappa=0.5, epochs=1))
    except KdcliError:
        return  # refusing a non-teacher run is one correct answer
    # the other: κ refers to the 300 samples the teacher saw, and the subset is drawn from them
    assert res.run["subset"]["n_pool"] == student.run["subset"]["size"] == 300
    import pyarrow.parquet as pq

    ids = set(pq.read_table(res.run_dir / "subset.parquet").column("index").to_pylist())
    teacher_ids = set(pq.read_table(student.dir / "subset.parquet").column("index").to_pylist())
    assert ids <= teacher_ids


def test_kappa_above_one_appends_fresh_samples(tmp_path):
    res = train.run(tiny_config(tmp_path / "r", kappa=1.5, epochs=1))
    idx = np.asarray([r["index"] for r in read_rows(res.run_dir / "subset.parquet")])
    assert len(idx) == 900
    assert sorted(idx[:600].tolist()) == list(range(600))  # the whole pool first
    assert idx[600:].tolist() == list(range(600, 900))  # then the generator's next samples
    assert res.run["subset"]["n_pool"] == 600


# ---------------------------------------------------------------------------- bad inputs


@pytest.fixture
def teacher_copy(teacher_run, tmp_path) -> Path:
    """A private copy of the session teacher, safe to damage."""
    return Path(shutil.copytree(teacher_run, tmp_path / "teacher"))


def labels_from(teacher, out, **kw):
    return train.run(tiny_config(out, teacher=str(teacher), kappa=0.5, epochs=1, **kw))


@pytest.mark.parametrize("content", ["empty", "foreign"])
def test_teacher_that_is_not_a_run(content, tmp_path):
    teacher = tmp_path / "not-a-run"
    teacher.mkdir()
    if content == "foreign":
        (teacher / "weights.pt").write_bytes(b"\0" * 16)
    with pytest.raises(ArtifactError, match="not a kdcli run") as info:
        labels_from(teacher, tmp_path / "s")
    assert "--teacher" in str(info.value)
    assert not (tmp_path / "s").exists()


def test_teacher_that_is_incomplete(teacher_copy, tmp_path):
    (teacher_copy / "run.json").unlink()
    with pytest.raises(ArtifactError, match="--teacher.*incomplete"):
        labels_from(teacher_copy, tmp_path / "s")


def test_teacher_that_does_not_exist(tmp_path):
    with pytest.raises(ArtifactError, match="--teacher.*no such run directory"):
        labels_from(tmp_path / "nowhere", tmp_path / "s")


@pytest.mark.parametrize("damage", ["modified", "truncated"])
def test_teacher_with_damaged_weights(damage, teacher_copy, tmp_path):
    weights = teacher_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    if damage == "modified":
        data[-1] ^= 0xFF  # one bit pattern in the last weight
    else:
        data = data[: len(data) // 2]
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256|truncated") as info:
        labels_from(teacher_copy, tmp_path / "s")
    assert "--teacher" in str(info.value)
    assert not (tmp_path / "s").exists()


def test_teacher_with_another_dataset_fingerprint(teacher_copy, tmp_path):
    run = json.loads((teacher_copy / "run.json").read_text())
    run["dataset"]["fingerprint"] = "0" * 64
    (teacher_copy / "run.json").write_text(json.dumps(run))
    with pytest.raises(ArtifactError, match="fingerprint"):
        labels_from(teacher_copy, tmp_path / "s")


def test_teacher_from_a_newer_format(teacher_copy, tmp_path):
    run = json.loads((teacher_copy / "run.json").read_text())
    run["format_version"] = 99
    (teacher_copy / "run.json").write_text(json.dumps(run))
    with pytest.raises(ArtifactError, match="format version"):
        labels_from(teacher_copy, tmp_path / "s")


@pytest.mark.parametrize("cut", ["header size only", "half", "last byte"])
def test_load_model_refuses_a_truncated_checkpoint(cut, teacher_copy):
    path = teacher_copy / "model.safetensors"
    data = path.read_bytes()
    keep = {"header size only": 8, "half": len(data) // 2, "last byte": len(data) - 1}[cut]
    path.write_bytes(data[:keep])
    with pytest.raises(ArtifactError, match="model.safetensors"):
        load_model(path)


def test_load_model_refuses_a_foreign_safetensors(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "plain.safetensors"
    save_file({"w": torch.zeros(2)}, str(path))
    with pytest.raises(ArtifactError, match="not a kdcli model"):
        load_model(path)
    with pytest.raises(ArtifactError, match="file not found"):
        load_model(tmp_path / "missing.safetensors")


def test_bad_kappa(tmp_path):
    for kappa in (0.0, -1.0, float("nan"), float("inf")):
        with pytest.raises(ConfigError, match="--kappa"):
            tiny_config(tmp_path / "r", kappa=kappa)
    with pytest.raises(ConfigError, match="--kappa") as info:
        train.run(tiny_config(tmp_path / "r", dataset="digits", dataset_args={}, model="test_mlp",
                              kappa=1.5))
    assert "digits" in str(info.value)
    with pytest.raises(ConfigError, match="--kappa"):  # ⌊κ·n_T⌋ = 0 samples
        train.run(tiny_config(tmp_path / "r", kappa=0.001))
    assert not (tmp_path / "r").exists()
