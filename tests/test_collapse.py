"""The `collapse` stage and command on tiny runs (values against the float64 reference of
tests/test_collapse_metrics.py on features taken by hand), and the report's collapse rows and
κ*-vs-teacher/student rows on synthetic run trees."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from kdcli.config import CollapseConfig
from kdcli.errors import ArtifactError, ConfigError
from kdcli.io.collapse import COLUMNS
from kdcli.stages import collapse as stage
from kdcli.stages import report
from tests.conftest import tiny_config
from tests.test_collapse_metrics import reference
from tests.test_report import write_run

pytestmark = pytest.mark.usefixtures("one_thread")
METRICS = ("nc1", "nc2_equinorm", "nc2_equiangular", "nc2_etf", "nc3", "nc4")


@pytest.fixture(scope="module")
def student_run(teacher_run, tmp_path_factory):
    from kdcli.stages import train

    out = tmp_path_factory.mktemp("collapse") / "student"
    train.run(tiny_config(out, teacher=str(teacher_run), kappa=0.5, seed=1, epochs=2))
    return out


def _by_hand(run_dir, split: str):
    """Features, labels, predictions and head weights of a run on a split, without kdcli's hooks:
    `seen` from the run's own subset.parquet."""
    from kdcli.data import dataset_from_description
    from kdcli.io.checkpoint import load_model

    run = json.loads((run_dir / "run.json").read_text())
    data = dataset_from_description(run["dataset"], None, str(run_dir))
    if split == "seen":
        ids = pq.read_table(run_dir / "subset.parquet").column("index").to_numpy()
        pool = data.train()
        where = {int(i): p for p, i in enumerate(pool.index.numpy())}
        x, y = pool.x[[where[int(i)] for i in ids]], pool.y[[where[int(i)] for i in ids]]
    else:
        s = data.split(split)
        x, y = s.x, s.y
    model, _ = load_model(run_dir / "model.safetensors")
    model.eval()
    with torch.no_grad():
        h = model.features(x).double().numpy()
        pred = model(x).argmax(1).numpy()
    return h, y.numpy(), pred, model.head.weight.detach().double().numpy(), run


def test_stage_rows_match_the_reference(teacher_run, student_run, tmp_path):
    out = tmp_path / "collapse.parquet"
    cfg = CollapseConfig(runs=(str(teacher_run), str(student_run)), out=str(out),
                         splits=("seen", "train", "test"), device="cpu", threads=1)
    result = stage.run(cfg)
    table = pq.read_table(out)
    assert table.column_names == list(COLUMNS) and table.to_pylist() == result.rows
    assert [(r["run_dir"], r["split"]) for r in result.rows] == [
        (str(d), s) for d in (teacher_run, student_run) for s in ("seen", "train", "test")]
    for r in result.rows:
        h, y, pred, w, run = _by_hand(teacher_run if r["run_dir"] == str(teacher_run) else student_run, r["split"])
        ref = reference(h, y, w, pred)
        for m in METRICS:
            assert r[m] == pytest.approx(ref[m], rel=1e-6, abs=1e-9), (r["run_dir"], r["split"], m)
        assert (r["n"], r["d"], r["run_id"]) == (len(y), h.shape[1], run["run_id"])
        assert r["accuracy"] == pytest.approx(float((pred == y).mean()))
        if r["split"] == "test":  # the network's own evaluation at the end of training
            assert r["accuracy"] == pytest.approx(run["final"]["test_acc"], abs=1e-9)
    seen = {r["run_dir"]: r["n"] for r in result.rows if r["split"] == "seen"}
    assert seen == {str(teacher_run): 600, str(student_run): 300}  # the student trained on κ = 0.5
    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    assert meta["format"] == "kdcli-collapse"


def test_max_samples_rerun_and_refusals(teacher_run, tmp_path):
    out = tmp_path / "c.parquet"
    cfg = CollapseConfig(runs=(str(teacher_run),), out=str(out), splits=("test",), max_samples=50,
                         device="cpu", threads=1)
    first = stage.run(cfg)
    assert [r["n"] for r in first.rows] == [50]
    again = stage.run(cfg)
    assert again.skipped and again.rows == first.rows
    before = out.read_bytes()
    with pytest.raises(ArtifactError, match="--out .*--overwrite"):
        stage.run(CollapseConfig(**{**cfg.__dict__, "max_samples": 60}))
    assert out.read_bytes() == before
    redone = stage.run(CollapseConfig(**{**cfg.__dict__, "max_samples": 60, "overwrite": True}))
    assert [r["n"] for r in redone.rows] == [60]
    junk = tmp_path / "junk.parquet"
    junk.write_text("not parquet")
    with pytest.raises(ArtifactError, match="not a kdcli collapse file"):
        stage.run(CollapseConfig(**{**cfg.__dict__, "out": str(junk)}))
    assert junk.read_text() == "not parquet"


def test_a_subset_that_no_longer_rebuilds_is_refused(teacher_run, student_run, tmp_path):
    copy = tmp_path / "student"
    shutil.copytree(student_run, copy)
    run = json.loads((copy / "run.json").read_text())
    run["subset"]["sha256"] = "0" * 64
    (copy / "run.json").write_text(json.dumps(run))
    with pytest.raises(ArtifactError, match="κ subset rebuilt"):
        stage.run(CollapseConfig(runs=(str(copy),), out=str(tmp_path / "c.parquet"), device="cpu", threads=1))
    assert not (tmp_path / "c.parquet").exists()


@pytest.mark.parametrize("kw,match", [({"splits": ("val",)}, "--split"), ({"out": "c.csv"}, "--out"),
                                      ({"runs": ()}, "RUN"), ({"max_samples": 1}, "--max-samples")])
def test_bad_settings_are_named(kw, match, tmp_path):
    base = {"runs": ("r",), "out": str(tmp_path / "c.parquet")}
    with pytest.raises(ConfigError, match=match):
        CollapseConfig(**{**base, **kw})


def test_command_end_to_end(teacher_run, tmp_path):
    from kdcli.cli.main import app

    out = tmp_path / "c.parquet"
    res = CliRunner().invoke(app, ["collapse", str(teacher_run), "--out", str(out), "--split", "test",
                                   "--threads", "1", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    assert "Neural collapse" in res.output and out.is_file()
    res = CliRunner().invoke(app, ["collapse", str(tmp_path / "nowhere"), "--out", str(tmp_path / "d.parquet")])
    assert res.exit_code != 0 and not (tmp_path / "d.parquet").exists()


# ------------------------------------------------------------------ report, synthetic trees

def _collapse_file(path, rows: list[dict]) -> None:
    """A collapse file written with pyarrow directly (not kdcli's writer)."""
    cols = {k: [r.get(k, 0.0 if t == "float64" else (0 if t == "int64" else "")) for r in rows]
            for k, (t, _) in COLUMNS.items()}
    table = pa.table(cols).replace_schema_metadata({"format": "kdcli-collapse", "format_version": "1"})
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, path)


def test_report_pairs_collapse_measures_by_seed(tmp_path):
    write_run(tmp_path, "teacher", stage="train-teacher", acc=0.9, run_id="T1")
    rng = np.random.default_rng(0)
    values, file_rows = {}, []
    for kappa in (0.1, 0.5):
        for s in range(3):
            for arm, stg in (("kd", "distill"), ("lab", "train-labels")):
                rid = f"{arm}-{kappa}-{s}"
                write_run(tmp_path, f"{arm}/k{kappa}/s{s}", stage=stg, acc=0.5, kappa=kappa, seed=s,
                          tau=4.0 if arm == "kd" else None, run_id=rid)
                for split in ("seen", "test"):
                    v = {m: float(rng.uniform(0.1, 2.0)) for m in METRICS}
                    values[(rid, split)] = v
                    if not (arm == "lab" and kappa == 0.5 and s == 2 and split == "seen"):  # one twin unmeasured
                        file_rows.append({"run_id": rid, "run_dir": rid, "split": split, **v})
    file_rows.append({"run_id": "T1", "run_dir": "teacher", "split": "test", **{m: 0.25 for m in METRICS}})
    _collapse_file(tmp_path / "nc" / "collapse.parquet", file_rows)
    (tmp_path / "nc" / "collapse_bad.parquet").write_text("junk")
    res = report.run(report.ReportConfig(root=str(tmp_path), out=str(tmp_path / "rep")))
    (part,) = res.kinds
    rows = {(r["kappa"], r["split"]): r for r in part.collapse_rows}
    assert set(rows) == {(k, s) for k in (0.1, 0.5) for s in ("seen", "test")}
    for (kappa, split), r in rows.items():
        seeds = [s for s in range(3) if not (kappa == 0.5 and s == 2 and split == "seen")]
        assert r["pairs"] == len(seeds) and r["arm"] == "kd τ=4 α=1"
        for m in METRICS:
            a = [values[(f"kd-{kappa}-{s}", split)][m] for s in seeds]
            b = [values[(f"lab-{kappa}-{s}", split)][m] for s in seeds]
            d = [x - y for x, y in zip(a, b)]
            half = {3: 4.303, 2: 12.706}[len(d)] * np.std(d, ddof=1) / math.sqrt(len(d))
            assert r[f"arm_{m}"] == pytest.approx(np.mean(a)) and r[f"labels_{m}"] == pytest.approx(np.mean(b))
            assert r[f"delta_{m}"] == pytest.approx(np.mean(d))
            assert (r[f"delta_{m}_lo"], r[f"delta_{m}_hi"]) == pytest.approx((np.mean(d) - half, np.mean(d) + half),
                                                                              abs=1e-9)
            assert r[f"teacher_{m}"] == (0.25 if split == "test" else pytest.approx(math.nan, nan_ok=True))
    assert [p for p, _ in res.damaged_files] == [str(tmp_path / "nc" / "collapse_bad.parquet")]
    names = {p.name for p in res.written}
    assert {"collapse.csv", "collapse_vs_kappa.png"} <= names
    assert "neural collapse vs κ, seen split" in (tmp_path / "rep" / "report.md").read_text()


def _set_parameters(root, name: str, parameters: int) -> None:
    path = root / name / "run.json"
    run = json.loads(path.read_text())
    run["model"]["parameters"] = parameters
    path.write_text(json.dumps(run))


def test_kappa_star_rows_carry_teacher_accuracy_student_size_and_peak(tmp_path):
    """Two teachers (90%, 60%) and two student widths: a κ* row per (teacher, student) with the
    teacher's accuracy, the student's parameters and the largest mean PI over κ."""
    pis = {}
    for teacher, tacc in (("T1", 0.9), ("T2", 0.6)):
        write_run(tmp_path, f"{teacher}/teacher", stage="train-teacher", acc=tacc, run_id=teacher)
        for channels, params in ((8, 1000), (16, 4000)):
            for kappa, gain in ((0.1, 0.08), (0.5, 0.02), (1.0, -0.03)):
                for s in range(2):
                    lab = 0.5 + 0.01 * s
                    kd = lab + gain * (tacc / 0.9) + 0.005 * s
                    pis.setdefault((teacher, channels, kappa), []).append(100 * (kd - lab))
                    for arm, stg, acc in (("kd", "distill", kd), ("lab", "train-labels", lab)):
                        name = f"{teacher}/c{channels}/{arm}/k{kappa}/s{s}"
                        write_run(tmp_path, name, stage=stg, acc=acc, kappa=kappa, seed=s, teacher=teacher,
                                  tau=4.0 if arm == "kd" else None, channels=channels)
                        _set_parameters(tmp_path, name, params)
    res = report.run(report.ReportConfig(root=str(tmp_path), out=str(tmp_path / "rep")))
    stars = res.kinds[0].kappa_star_rows
    assert len(stars) == 4
    for r in stars:
        channels = int(r["model"].split("=")[1])
        assert r["teacher_metric"] == pytest.approx({"T1": 90.0, "T2": 60.0}[r["teacher"]])
        assert r["student_parameters"] == {8: 1000, 16: 4000}[channels]
        means = {k: np.mean(pis[(r["teacher"], channels, k)]) for k in (0.1, 0.5, 1.0)}
        assert r["peak_kappa"] == 0.1 and r["peak_pi"] == pytest.approx(means[0.1])
        assert r["status"] == "crossed" and 0.5 < r["kappa_star"] < 1.0
    names = {p.name for p in res.written}
    assert {"kappa_star_vs_teacher.png", "kappa_star_vs_student.png"} <= names


def test_one_class_in_a_split_is_one_error(teacher_run, tmp_path):
    from kdcli.errors import DataError

    out = tmp_path / "c.parquet"
    with pytest.raises(DataError, match="test split's samples \\(--max-samples 2\\) hold one class"):
        for seed in range(50):  # a seed whose two samples share their class
            stage.run(CollapseConfig(runs=(str(teacher_run),), out=str(out), splits=("test",), max_samples=2,
                                     seed=seed, device="cpu", threads=1, overwrite=True))
    assert not out.exists() or pq.read_table(out).num_rows == 1


def test_dead_features_are_not_called_collapsed():
    """All class means equal (dead ReLU features): NC1–NC3 are NaN, not the 0 of perfect collapse."""
    from kdcli.metrics.collapse import collapse

    h = np.zeros((6, 4))
    y = np.array([0, 0, 1, 1, 2, 2])
    m = collapse(h, y, np.ones((3, 4)), y)
    assert all(math.isnan(m[k]) for k in ("nc1", "nc2_equinorm", "nc2_equiangular", "nc2_etf", "nc3"))
    assert m["nc4"] == pytest.approx(4 / 6)  # the nearest mean is class 0 (a tie, the first) everywhere


def test_pairs_measured_on_other_samples_are_not_paired(tmp_path):
    write_run(tmp_path, "teacher", stage="train-teacher", acc=0.9, run_id="T1")
    write_run(tmp_path, "kd", stage="distill", acc=0.6, tau=4.0, run_id="kd")
    write_run(tmp_path, "lab", stage="train-labels", acc=0.5, run_id="lab")
    for name, rid, draw in (("collapse_a.parquet", "kd", "100"), ("collapse_b.parquet", "lab", "200")):
        table = pa.table({k: [rid if k == "run_id" else ("test" if k == "split" else (rid if t == "string" else
                                                                                 (1 if t == "int64" else 0.5)))]
                          for k, (t, _) in COLUMNS.items()})
        pq.write_table(table.replace_schema_metadata({"format": "kdcli-collapse", "format_version": "1",
                                                      "max_samples": draw, "seed": "0"}), tmp_path / name)
    res = report.run(report.ReportConfig(root=str(tmp_path)))
    assert res.rows and not res.kinds[0].collapse_rows
