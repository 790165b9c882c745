"""dump-logits and distill: pairing with train-labels, offline ≡ online, fidelity, bad input."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from kdcli.config import DistillConfig, DumpConfig
from kdcli.errors import ArtifactError, ConfigError
from kdcli.io.checkpoint import load_model, load_tensors
from kdcli.stages import distill, dump_logits, train
from tests.conftest import tiny_config


@pytest.fixture(scope="session")
def logits_file(teacher_run, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("logits") / "teacher.parquet"
    dump_logits.run(DumpConfig(teacher=str(teacher_run), out=str(out), device="cpu"))
    return out


def _kd_fields(out, **kw):
    """A tiny DistillConfig: the dataset and model come from the teacher or logits file."""
    base = tiny_config(out, teacher="unused").to_dict()
    base.update(stage="distill", teacher=None)
    base.update(kw)
    return DistillConfig(**base)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    return load_tensors(run_dir / "model.safetensors")[0]


def test_dump_writes_pool_and_test(teacher_run, logits_file):
    table = pq.read_table(logits_file)
    run = json.loads((teacher_run / "run.json").read_text())
    splits = table.column("split").to_pylist()
    assert splits.count("train") == run["dataset"]["n_train"]
    assert splits.count("test") == run["dataset"]["n_test"]
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert meta["teacher_run_id"] == run["run_id"]
    assert meta["teacher_model_sha256"] == run["artifacts"]["model.safetensors"]
    assert meta["dataset_fingerprint"] == run["dataset"]["fingerprint"]
    # the stored logits are the teacher's raw outputs
    model, _ = load_model(teacher_run / "model.safetensors")
    from kdcli.data import build_dataset

    data = build_dataset("mnist1d", {k: v for k, v in run["dataset"]["args"].items() if k != "generator"})
    with torch.no_grad():
        expected = model.eval()(data.test().x[:5]).numpy()
    test_rows = np.array(splits) == "test"
    stored = np.stack(table.column("logits").to_numpy(zero_copy_only=False)[test_rows][:5])
    np.testing.assert_allclose(stored, expected, rtol=1e-5, atol=1e-5)


def test_alpha_zero_is_bit_identical_to_train_labels(teacher_run, logits_file, tmp_path):
    kd = distill.run(_kd_fields(tmp_path / "kd", logits=str(logits_file), alpha=0.0, kappa=0.3, seed=3))
    lab = train.run(tiny_config(tmp_path / "lab", teacher=str(teacher_run), kappa=0.3, seed=3))
    a, b = _weights(kd.run_dir), _weights(lab.run_dir)
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert kd.run["subset"]["sha256"] == lab.run["subset"]["sha256"]
    assert kd.run["teacher"]["run_id"] == lab.run["teacher"]["run_id"]


def test_offline_and_online_give_the_same_loss_and_run(teacher_run, logits_file, tmp_path):
    from kdcli.data import build_dataset, kappa_subset
    from kdcli.losses import kd_loss
    from kdcli.teacher import resolve_teacher

    source = resolve_teacher(str(teacher_run), None)
    args = {k: v for k, v in source.dataset["args"].items() if k != "generator"}
    data = build_dataset("mnist1d", args)
    batch = kappa_subset(data, 0.2, 0).split
    from kdcli.io.logits import read_logits

    offline = read_logits(logits_file, "train").rows_for(batch.index.numpy(), "test")
    with torch.no_grad():
        online = source.load_model(torch.device("cpu"))(batch.x)
    student = torch.randn(len(batch), 10)
    for tau in (1.0, 4.0):
        a = kd_loss(student, offline, tau=tau)
        b = kd_loss(student, online, tau=tau)
        assert a.item() == pytest.approx(b.item(), rel=1e-6, abs=1e-7)

    off = distill.run(_kd_fields(tmp_path / "off", logits=str(logits_file), kappa=0.2))
    on = distill.run(_kd_fields(tmp_path / "on", teacher=str(teacher_run), kappa=0.2))
    assert off.run["kd"]["mode"] == "offline" and on.run["kd"]["mode"] == "online"
    wa, wb = _weights(off.run_dir), _weights(on.run_dir)
    assert all(torch.allclose(wa[k], wb[k], atol=1e-5) for k in wa)


def test_fidelity_columns_match_an_independent_computation(teacher_run, logits_file, tmp_path):
    kd = distill.run(_kd_fields(tmp_path / "kd", logits=str(logits_file), kappa=0.5, tau=2.0))
    lab = train.run(tiny_config(tmp_path / "lab", teacher=str(teacher_run), kappa=0.5))
    teacher, info = load_model(teacher_run / "model.safetensors")
    from kdcli.data import build_dataset

    data = build_dataset("mnist1d", {k: v for k, v in info["dataset"]["args"].items() if k != "generator"})
    x = data.test().x
    with torch.no_grad():
        t = teacher.eval()(x).double().numpy()
    for res in (kd, lab):
        rows = pq.read_table(res.run_dir / "metrics.parquet").to_pylist()
        assert {"teacher_agreement", "teacher_kl"} <= set(rows[0])
        student, _ = load_model(res.run_dir / "model.safetensors")
        with torch.no_grad():
            s = student.eval()(x).double().numpy()
        agreement = np.mean(s.argmax(1) == t.argmax(1))
        lt = t - t.max(1, keepdims=True)
        lt -= np.log(np.exp(lt).sum(1, keepdims=True))
        ls = s - s.max(1, keepdims=True)
        ls -= np.log(np.exp(ls).sum(1, keepdims=True))
        kl = np.mean((np.exp(lt) * (lt - ls)).sum(1))
        assert rows[-1]["teacher_agreement"] == pytest.approx(agreement, abs=1e-9)
        assert rows[-1]["teacher_acc"] == pytest.approx(np.mean(t.argmax(1) == data.test().y.numpy()), abs=1e-9)
        assert rows[-1]["teacher_kl"] == pytest.approx(kl, rel=1e-4)


def test_topk_logits_distill(teacher_run, tmp_path):
    path = tmp_path / "top3.parquet"
    dump_logits.run(DumpConfig(teacher=str(teacher_run), out=str(path), topk=3, dtype="float16", device="cpu"))
    res = distill.run(_kd_fields(tmp_path / "kd", logits=str(path), kappa=0.2))
    assert res.run["kd"]["topk_tail"] == "uniform" and "tail" in res.run["kd"]["topk_tail_definition"]
    assert np.isfinite(res.run["final"]["test_loss"])


def test_kappa_above_one_needs_extra_logits(teacher_run, logits_file, tmp_path):
    with pytest.raises(ArtifactError, match="--extra-train"):
        distill.run(_kd_fields(tmp_path / "kd", logits=str(logits_file), kappa=1.5))
    assert not (tmp_path / "kd").exists()
    extra = tmp_path / "extra.parquet"
    dump_logits.run(DumpConfig(teacher=str(teacher_run), out=str(extra), extra_train=300, device="cpu"))
    res = distill.run(_kd_fields(tmp_path / "kd", logits=str(extra), kappa=1.5))
    assert res.run["subset"]["size"] == 900


def _file_meta(path: Path) -> dict[str, str]:
    """Schema and footer metadata of a logits file (its content sha256 is in the footer)."""
    raw = dict(pq.read_metadata(path).metadata)
    raw.pop(b"ARROW:schema")
    return {k.decode(): v.decode() for k, v in raw.items()}


def _rewrite(src: Path, dst: Path, **meta_changes):
    table = pq.read_table(src)
    meta = _file_meta(src)
    for key, change in meta_changes.items():
        meta[key] = change(meta[key])
    pq.write_table(table.replace_schema_metadata(meta), dst)
    return dst


def _other_fingerprint(raw: str) -> str:
    d = json.loads(raw)
    d["fingerprint"] = "0" * 64
    return json.dumps(d)


@pytest.mark.parametrize("case, error, words", [
    ("fingerprint", ArtifactError, "fingerprint mismatch"),
    ("classes", ArtifactError, "7 classes"),
    ("truncated", ArtifactError, "truncated"),
    ("not_parquet", ArtifactError, "Parquet"),
    ("nan", ArtifactError, "NaN"),
    ("changed", ArtifactError, "do not match the sha256 recorded"),
])
def test_bad_logits_files(logits_file, tmp_path, case, error, words):
    bad = tmp_path / "bad.parquet"
    if case == "fingerprint":
        _rewrite(logits_file, bad, dataset=_other_fingerprint)
    elif case == "classes":
        _rewrite(logits_file, bad, num_classes=lambda _: "7")
    elif case == "truncated":
        bad.write_bytes(logits_file.read_bytes()[: logits_file.stat().st_size // 2])
    elif case == "not_parquet":
        bad.write_text("this is not parquet\n")
    elif case == "changed":  # one logit changed, the file otherwise valid (page checksums recomputed)
        table = pq.read_table(logits_file)
        logits = np.stack(table.column("logits").to_numpy(zero_copy_only=False)).astype(np.float32)
        logits[3, 2] = 2.7e23
        import pyarrow as pa

        col = pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), logits.shape[1])
        pq.write_table(table.set_column(2, "logits", col).replace_schema_metadata(_file_meta(logits_file)), bad)
    else:
        table = pq.read_table(logits_file)
        logits = np.stack(table.column("logits").to_numpy(zero_copy_only=False)).astype(np.float32)
        logits[5, 1] = np.nan
        import pyarrow as pa

        col = pa.FixedSizeListArray.from_arrays(pa.array(logits.reshape(-1)), logits.shape[1])
        # as a teacher that gave NaN would have written it: the recorded sha256 matches
        from kdcli.io.logits import content_sha256

        meta = _file_meta(logits_file)
        splits = np.asarray(table.column("split").to_pylist())
        index = table.column("index").to_numpy()
        meta["content_sha256"] = json.dumps({name: content_sha256([index[splits == name], logits[splits == name]])
                                             for name in ("train", "test")})
        meta.pop("chunks")  # one chunk per split
        pq.write_table(table.set_column(2, "logits", col).replace_schema_metadata(meta), bad)
    out = tmp_path / "kd"
    with pytest.raises(error, match=words):
        distill.run(_kd_fields(out, logits=str(bad), kappa=0.5))
    assert not out.exists()


def test_modified_teacher_checkpoint_is_refused(teacher_run, tmp_path):
    copy = tmp_path / "teacher"
    shutil.copytree(teacher_run, copy)
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        distill.run(_kd_fields(tmp_path / "kd", teacher=str(copy), kappa=0.5))
    with pytest.raises(ArtifactError, match="sha256"):
        dump_logits.run(DumpConfig(teacher=str(copy), out=str(tmp_path / "l.parquet")))
    assert not (tmp_path / "l.parquet").exists()


def test_logits_of_another_teacher_are_refused(logits_file, tmp_path):
    other = tmp_path / "other"
    train.run(tiny_config(other, stage="train-teacher", seed=9, epochs=1))
    with pytest.raises(ArtifactError, match="not from --teacher"):
        distill.run(_kd_fields(tmp_path / "kd", logits=str(logits_file), teacher=str(other)))


@pytest.mark.parametrize("kw, flag", [({"tau": 0.0}, "--tau"), ({"tau": -2.0}, "--tau"),
                                      ({"alpha": 1.5}, "--alpha"), ({"alpha": -0.5}, "--alpha"),
                                      ({"augment": True}, "--augment")])
def test_bad_options(logits_file, tmp_path, kw, flag):
    with pytest.raises(ConfigError, match=flag):
        _kd_fields(tmp_path / "kd", logits=str(logits_file), **kw)


def test_distill_needs_a_teacher(tmp_path):
    with pytest.raises(ConfigError, match="--logits or --teacher"):
        _kd_fields(tmp_path / "kd")


def test_dump_is_skipped_when_done_and_refused_when_different(teacher_run, logits_file, tmp_path):
    before = logits_file.read_bytes()
    res = dump_logits.run(DumpConfig(teacher=str(teacher_run), out=str(logits_file)))
    assert res.skipped and logits_file.read_bytes() == before
    with pytest.raises(ArtifactError, match="--overwrite"):
        dump_logits.run(DumpConfig(teacher=str(teacher_run), out=str(logits_file), dtype="float16"))
    assert logits_file.read_bytes() == before


def test_cli_bad_input_is_one_error_line(logits_file, tmp_path):
    kdcli = Path(sys.executable).parent / "kdcli"
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(logits_file.read_bytes()[:100])
    for args, flag in ((["--logits", str(logits_file), "--tau", "0"], "--tau"),
                       (["--logits", str(bad)], "--logits")):
        proc = subprocess.run([str(kdcli), "distill", "--out", str(tmp_path / "kd"), *args],
                              capture_output=True, text=True)
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error:") and flag in lines[0], proc.stderr
        assert not (tmp_path / "kd").exists()
