"""CKA: the estimators against an independent float64 reference, their invariances and
numerics, the minibatch estimator, and the `cka` stage and command on tiny runs."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch
from typer.testing import CliRunner

from kdcli.config import CKAConfig
from kdcli.errors import ArtifactError, ConfigError, DataError
from kdcli.io.cka import CKA_FORMAT_VERSION, COLUMNS
from kdcli.metrics.cka import MinibatchCKA, linear_cka, rbf_cka
from kdcli.models import layers
from kdcli.stages import cka as stage
from kdcli.task import classification
from tests.conftest import tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------- the reference
# Textbook formulas on explicit n×n matrices, float64 throughout: the biased HSIC
# tr(KHLH)/(n−1)² (Gretton et al. 2005) and the unbiased HSIC of Song et al. (2012, eq. 5)
# on uncentred Grams; no code shared with kdcli.metrics.cka.


def ref_hsic(k: np.ndarray, g: np.ndarray, unbiased: bool) -> float:
    n = len(k)
    if not unbiased:
        h = np.eye(n) - np.full((n, n), 1.0 / n)
        return float(np.trace(k @ h @ g @ h)) / (n - 1) ** 2
    kt, lt = k.copy(), g.copy()
    np.fill_diagonal(kt, 0.0)
    np.fill_diagonal(lt, 0.0)
    one = np.ones(n)
    return float(np.trace(kt @ lt) + (one @ kt @ one) * (one @ lt @ one) / ((n - 1) * (n - 2))
                 - 2.0 / (n - 2) * (one @ kt @ lt @ one)) / (n * (n - 3))


def ref_cka(k, g, unbiased=False) -> float:
    return ref_hsic(k, g, unbiased) / np.sqrt(ref_hsic(k, k, unbiased) * ref_hsic(g, g, unbiased))


def ref_linear(x) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    return x @ x.T


def ref_rbf(x, sigma) -> np.ndarray:
    """exp(−d²/(2σ²·median d²)), the median over all n² entries, as in Kornblith et al.'s notebook."""
    x = np.asarray(x, dtype=np.float64)
    d2 = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    return np.exp(-d2 / (2 * sigma**2 * np.median(d2)))


def ref_feature_space(x, y) -> float:
    x = np.asarray(x, dtype=np.float64) - np.mean(x, 0)
    y = np.asarray(y, dtype=np.float64) - np.mean(y, 0)
    return np.linalg.norm(y.T @ x) ** 2 / (np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y))


def related(n, dx, dy, seed=0, noise=1.0):
    """Two representations that share structure: y is a noisy linear map of x."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, dx)) * rng.uniform(0.2, 3.0, dx)
    y = x @ rng.standard_normal((dx, dy)) / np.sqrt(dx) + noise * rng.standard_normal((n, dy))
    return x, y


# ---------------------------------------------------------------------------- the estimators


def test_published_reference_values():
    """Kornblith et al. (2019), reference notebook: np.random.seed(1337), X, Y = X + noise."""
    np.random.seed(1337)
    x = np.random.randn(100, 10)
    y = np.random.randn(100, 10) + x
    assert round(linear_cka(x, y), 5) == 0.55761
    assert round(rbf_cka(x, y, sigma=0.5), 5) == 0.65483
    assert round(linear_cka(x, y, debiased=True), 5) == 0.51346
    assert linear_cka(x, y) == pytest.approx(ref_cka(ref_linear(x), ref_linear(y)), abs=1e-12)
    assert rbf_cka(x, y, 0.5) == pytest.approx(ref_cka(ref_rbf(x, 0.5), ref_rbf(y, 0.5)), abs=1e-12)
    assert linear_cka(x, y, True) == pytest.approx(ref_cka(ref_linear(x), ref_linear(y), True), abs=1e-12)


@pytest.mark.parametrize("n,dx,dy", [(40, 5, 90), (60, 120, 7), (50, 50, 50), (8, 3, 2)])
@pytest.mark.parametrize("debiased", [False, True])
def test_linear_forms_agree_with_the_reference(n, dx, dy, debiased):
    x, y = related(n, dx, dy, seed=n + dx)
    expected = ref_cka(ref_linear(x), ref_linear(y), debiased)
    for form in ("gram", "features", "auto"):
        assert linear_cka(x, y, debiased, form=form) == pytest.approx(expected, abs=1e-10), form
    if not debiased:
        assert ref_feature_space(x, y) == pytest.approx(expected, abs=1e-10)  # the references agree too


@pytest.mark.parametrize("sigma", [0.3, 1.0, 4.0])
@pytest.mark.parametrize("debiased", [False, True])
def test_rbf_agrees_with_the_reference(sigma, debiased):
    x, y = related(41, 6, 9, seed=3)  # odd n: an odd count of distances, the median is one of them
    expected = ref_cka(ref_rbf(x, sigma), ref_rbf(y, sigma), debiased)
    assert rbf_cka(x, y, sigma, debiased) == pytest.approx(expected, abs=1e-10)


def test_self_similarity_is_one():
    x, _ = related(70, 12, 3)
    for value in (linear_cka(x, x), linear_cka(x, x, True), linear_cka(x, x, form="gram"),
                  rbf_cka(x, x), rbf_cka(x, x, 0.5, True)):
        assert value == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("side", ["x", "y"])
def test_invariant_to_orthogonal_maps_and_isotropic_scaling(side):
    x, y = related(80, 16, 16, seed=5)
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    for transform in (lambda a: a @ q, lambda a: 37.0 * a, lambda a: 1e-3 * (a @ q)):
        tx, ty = (transform(x), y) if side == "x" else (x, transform(y))
        assert linear_cka(tx, ty) == pytest.approx(linear_cka(x, y), abs=1e-10)
        assert linear_cka(tx, ty, True) == pytest.approx(linear_cka(x, y, True), abs=1e-10)
        assert rbf_cka(tx, ty, 0.8) == pytest.approx(rbf_cka(x, y, 0.8), abs=1e-10)


def test_debiased_is_near_zero_for_independent_features():
    """n = 256 ≪ d = 4096: biased CKA of independent Gaussians is far from 0, debiased is not."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((256, 4096), dtype=np.float32)
    y = rng.standard_normal((256, 4096), dtype=np.float32)
    assert linear_cka(x, y) > 0.9
    assert abs(linear_cka(x, y, debiased=True)) < 0.02
    assert abs(rbf_cka(x, y, debiased=True)) < 0.02
    assert linear_cka(x, y, True) == pytest.approx(ref_cka(ref_linear(x), ref_linear(y), True), abs=1e-9)


def test_constant_offset_in_float32_changes_nothing():
    x, y = related(200, 30, 20, seed=2)
    x, y = x.astype(np.float32), y.astype(np.float32)
    xo, yo = x + np.float32(1000), y + np.float32(1000)
    # float32 x + 1000 keeps ~4 decimals of x: only that rounding may move the value
    assert linear_cka(xo, yo) == pytest.approx(linear_cka(x, y), abs=1e-5)
    assert linear_cka(xo, yo, True) == pytest.approx(linear_cka(x, y, True), abs=1e-5)
    assert rbf_cka(xo, yo) == pytest.approx(rbf_cka(x, y), abs=1e-5)
    # the reference's uncentred float64 Grams (entries ~3e7) carry ~1e-9 error of their own
    assert linear_cka(torch.from_numpy(xo), torch.from_numpy(yo), form="gram") == pytest.approx(
        ref_cka(ref_linear(xo), ref_linear(yo)), abs=1e-7)

    def centred_float32_gram(a):  # what the estimator must not do: products before centring
        h = np.eye(len(a), dtype=np.float32) - np.float32(1 / len(a))
        return h @ (a @ a.T) @ h

    kx, ky = centred_float32_gram(xo), centred_float32_gram(yo)
    naive = float((kx * ky).sum() / np.sqrt((kx * kx).sum() * (ky * ky).sum()))
    assert abs(naive - linear_cka(x, y)) > 1e-3  # 10⁴ × the rounding above: the test has teeth


def test_minibatch_matches_a_reference_and_approaches_full_debiased():
    x, y = related(1024, 24, 40, seed=7, noise=2.0)
    full = linear_cka(x, y, debiased=True)
    errors = {}
    for m in (16, 64, 256, 1024):
        acc = MinibatchCKA()
        for i in range(0, len(x), m):
            acc.update(x[i:i + m], torch.from_numpy(y[i:i + m]))
        assert acc.n == len(x) and acc.batches == len(x) // m
        if m == 64:  # Nguyen et al. (2021): the mean of per-batch unbiased HSICs, then the ratio
            assert acc.value() == pytest.approx(_reference("minibatch", x, y, m), abs=1e-10)
        errors[m] = abs(acc.value() - full)
    assert errors[1024] < 1e-12  # one batch of everything is the full-data estimator
    assert errors[16] > errors[64] > errors[256]


def test_minibatch_layer_matrix_equals_pairwise_values():
    x1, y1 = related(256, 8, 30, seed=1)
    x2, _ = related(256, 50, 3, seed=2)
    acc, single = MinibatchCKA(), MinibatchCKA()
    for i in range(0, 256, 64):
        acc.update([x1[i:i + 64], x2[i:i + 64]], [y1[i:i + 64]])
        single.update(x2[i:i + 64], y1[i:i + 64])
    m = acc.matrix()
    assert m.shape == (2, 1)
    assert m[1, 0] == pytest.approx(single.value(), abs=1e-12)


@pytest.mark.parametrize("call,match", [
    (lambda x: linear_cka(np.where(np.arange(40)[:, None] == 3, np.nan, x), x), "NaN"),
    (lambda x: rbf_cka(x, np.where(np.arange(40)[:, None] == 0, np.inf, x)), "y: features contain NaN or inf"),
    (lambda x: linear_cka(x[:3], x[:3], debiased=True), "at least 4 samples"),
    (lambda x: MinibatchCKA().update(x[:3], x[:3]), "minibatch size = 3"),
    (lambda x: linear_cka(x, x[:30]), "40 vs 30 samples"),
    (lambda x: linear_cka(np.ones_like(x), x), "constant"),
    (lambda x: linear_cka(x[:, :, None], x), "2-D"),
])
def test_bad_features_raise_one_clear_error(call, match):
    x, _ = related(40, 6, 2)
    with pytest.raises(DataError, match=match):
        call(x)


# ---------------------------------------------------------------------------- the stage


@pytest.fixture(scope="module")
def student_run(teacher_run, tmp_path_factory) -> Path:
    from kdcli.stages import train

    out = tmp_path_factory.mktemp("cka") / "student"
    train.run(tiny_config(out, teacher=str(teacher_run), kappa=0.5, seed=1, epochs=1))
    return out


@pytest.fixture(scope="module")
def other_data_run(tmp_path_factory) -> Path:
    from kdcli.stages import train

    out = tmp_path_factory.mktemp("cka") / "other"
    train.run(tiny_config(out, stage="train-teacher", epochs=1, dataset_args={"n_train": 200, "n_test": 100}))
    return out


def _samples_and_features(run_dir: Path, cfg: CKAConfig, module_path: str):
    """The same samples as the stage, and the output of model.features[:k] (or .features), by hand."""
    from kdcli.data import dataset_from_description
    from kdcli.io.checkpoint import load_model

    run = json.loads((run_dir / "run.json").read_text())
    split = dataset_from_description(run["dataset"], None, str(run_dir)).test()
    pos = torch.randperm(len(split), generator=torch.Generator().manual_seed(cfg.seed))[:cfg.max_samples]
    model, _ = load_model(run_dir / "model.safetensors")
    module = model.features if module_path == "features" else model.features[:int(module_path.split(".")[1]) + 1]
    with torch.no_grad():
        return module.eval()(split.x[pos]).flatten(1).double().numpy()


def test_stage_values_rows_and_metadata(teacher_run, student_run, tmp_path):
    out = tmp_path / "cka.parquet"
    cfg = CKAConfig(run_a=str(teacher_run), run_b=str(student_run), out=str(out), max_samples=200,
                    layers_a=("features", "features.1"), estimators=("linear", "debiased", "rbf", "minibatch"),
                    batch_size=50, bootstrap=4, device="cpu", threads=1)
    result = stage.run(cfg)
    table = pq.read_table(out)
    assert table.column_names == list(COLUMNS)
    assert [str(t) for t in table.schema.types] == [COLUMNS[c][0].replace("float64", "double")
                                                     for c in table.column_names]
    rows = table.to_pylist()
    assert [(r["estimator"], r["layer_a"], r["layer_b"]) for r in rows] == [
        (e, la, "features") for e in ("linear", "debiased", "rbf", "minibatch") for la in ("features", "features.1")]
    assert rows == result.rows

    fa = {la: _samples_and_features(teacher_run, cfg, la) for la in ("features.1", "features")}
    fb = _samples_and_features(student_run, cfg, "features")
    for r in rows:
        x = fa[r["layer_a"]]
        assert (r["n"], r["d_a"], r["d_b"]) == (200, x.shape[1], fb.shape[1])
        assert r["value"] == pytest.approx(_reference(r["estimator"], x, fb, 50), abs=1e-6), r
        assert r["ci_low"] <= r["ci_high"]
        assert r["batches"] == (4 if r["estimator"] == "minibatch" else None)

    meta = {k.decode(): v.decode() for k, v in table.schema.metadata.items()}
    run_a = json.loads((teacher_run / "run.json").read_text())
    run_b = json.loads((student_run / "run.json").read_text())
    assert meta["format"] == "kdcli-cka" and meta["format_version"] == CKA_FORMAT_VERSION
    assert (meta["run_a_id"], meta["run_b_id"]) == (run_a["run_id"], run_b["run_id"])
    assert meta["run_a_model_sha256"] == run_a["artifacts"]["model.safetensors"]
    assert meta["run_b_model_sha256"] == run_b["artifacts"]["model.safetensors"]
    assert meta["dataset_fingerprint"] == run_a["dataset"]["fingerprint"]
    assert json.loads(meta["provenance"])["inputs"]["run_b_model"] == meta["run_b_model_sha256"]


def _reference(estimator: str, x: np.ndarray, y: np.ndarray, batch: int) -> float:
    if estimator == "rbf":
        return ref_cka(ref_rbf(x, 1.0), ref_rbf(y, 1.0))
    if estimator != "minibatch":
        return ref_cka(ref_linear(x), ref_linear(y), estimator == "debiased")
    hsic = []
    for i in range(0, len(x), batch):
        kx, ky = ref_linear(x[i:i + batch]), ref_linear(y[i:i + batch])
        hsic.append([ref_hsic(kx, ky, True), ref_hsic(kx, kx, True), ref_hsic(ky, ky, True)])
    xy, xx, yy = np.mean(hsic, axis=0)
    return xy / np.sqrt(xx * yy)


def test_rerun_is_skipped_and_other_settings_are_refused(teacher_run, student_run, tmp_path):
    out = tmp_path / "c.parquet"
    cfg = CKAConfig(run_a=str(teacher_run), run_b=str(student_run), out=str(out), max_samples=60,
                    estimators=("linear",), device="cpu", threads=1)
    first = stage.run(cfg)
    again = stage.run(cfg)  # a re-run array task: nothing recomputed
    assert again.skipped and again.rows == first.rows
    other = CKAConfig(**{**cfg.__dict__, "max_samples": 50})
    with pytest.raises(ArtifactError, match="--out .*--overwrite"):
        stage.run(other)
    redone = stage.run(CKAConfig(**{**other.__dict__, "overwrite": True}))
    assert not redone.skipped and redone.rows[0]["n"] == 50


def test_minibatch_alone_streams_the_features(teacher_run, student_run, tmp_path, monkeypatch):
    def no_buffers(*_):
        raise AssertionError("features were kept in memory")

    monkeypatch.setattr(stage, "_buffer", no_buffers)
    result = stage.run(CKAConfig(run_a=str(teacher_run), run_b=str(student_run), out=str(tmp_path / "m.parquet"),
                                 estimators=("minibatch",), batch_size=64, device="cpu", threads=1))
    assert result.rows[0]["n"] == 300 and result.rows[0]["batches"] == 5  # 4 × 64, then a batch of 44
    assert result.rows[0]["d_a"] > 0


def test_default_layers_and_hooks_on_a_torchvision_model():
    import torchvision

    model = torchvision.models.resnet18(num_classes=10).eval()
    assert layers.default_layer(model) == "fc:in"
    x = torch.randn(2, 3, 32, 32)
    with layers.LayerHooks(model, ["fc:in", "layer4"], classification(10), flag="--layers-a", label="RUN_A") as hooks, torch.no_grad():
        out = hooks.forward(x)
    assert out["fc:in"].shape == (2, 512) and out["layer4"].shape == (2, 512 * 1 * 1)
    with pytest.raises(ConfigError, match="runs 2 times"):  # torchvision's BasicBlock reuses its ReLU
        with layers.LayerHooks(model, ["layer1.0.relu"], classification(10), flag="--layers-a", label="RUN_A") as hooks:
            hooks.forward(x)


def _nan_run(run_dir: Path, root: Path) -> Path:
    """A copy of a run whose weights are NaN, with run.json's hash updated so it is accepted."""
    from kdcli.io.checkpoint import load_tensors, save_tensors
    from kdcli.io.hashing import sha256_file

    bad = Path(shutil.copytree(run_dir, root / "nan-run"))
    tensors, meta = load_tensors(bad / "model.safetensors")
    tensors = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v for k, v in tensors.items()}
    save_tensors(bad / "model.safetensors", tensors, meta)
    run = json.loads((bad / "run.json").read_text())
    run["artifacts"]["model.safetensors"] = sha256_file(bad / "model.safetensors")
    (bad / "run.json").write_text(json.dumps(run))
    return bad


BAD = {  # extra CLI arguments ({a}, {b}, {other}, {nan} are run dirs), the text the one line must hold
    "different datasets": (["{a}", "{other}"], "RUN_B"),
    "unknown layer": (["{a}", "{b}", "--layers-b", "features.9"], "valid names are features, features.0"),
    "bad layer suffix": (["{a}", "{b}", "--layers-a", "features:out"], "--layers-a"),
    "n < 4, unbiased": (["{a}", "{b}", "--max-samples", "3"], "--max-samples"),
    "minibatch batch < 4": (["{a}", "{b}", "-e", "minibatch", "--batch-size", "2"], "--batch-size"),
    "NaN features": (["{a}", "{nan}"], "NaN or inf"),
    "unknown estimator": (["{a}", "{b}", "-e", "cosine"], "--estimator"),
    "one run": (["{a}"], "RUN_A RUN_B"),
    "not a run": (["{a}", "{root}"], "RUN_B"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_input_gives_one_error_line(case, teacher_run, student_run, other_data_run, tmp_path,
                                        monkeypatch, capsys):
    from kdcli.cli.main import main

    runs = {"a": teacher_run, "b": student_run, "other": other_data_run, "root": tmp_path}
    if case == "NaN features":
        runs["nan"] = _nan_run(student_run, tmp_path)
    extra, text = BAD[case]
    out = tmp_path / "out.parquet"
    monkeypatch.setattr(sys, "argv", ["kdcli", "cka", *[a.format(**runs) for a in extra], "--out", str(out),
                                      "--device", "cpu", "--threads", "1", "--max-samples", "40"]
                        if case != "n < 4, unbiased" else
                        ["kdcli", "cka", *[a.format(**runs) for a in extra], "--out", str(out)])
    monkeypatch.delenv("KDCLI_DEBUG", raising=False)
    with pytest.raises(SystemExit) as info:
        main()
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert info.value.code not in (0, None)
    assert len(lines) == 1 and lines[0].startswith("Error:") and "Traceback" not in err, err
    assert text in lines[0], lines[0]
    assert not out.exists()


def test_command_end_to_end(teacher_run, student_run, tmp_path):
    from kdcli.cli.main import app

    runner = CliRunner()
    res = runner.invoke(app, ["cka", "--list-layers", str(teacher_run)])
    assert res.exit_code == 0, res.output
    assert "features.3" in res.stdout and "default (penultimate)" in res.stdout

    out = tmp_path / "cka.parquet"
    args = ["cka", str(teacher_run), str(student_run), "--out", str(out), "--layers-a", "features.1,features",
            "--layers-b", "features.3", "--layers-b", "features", "-e", "linear", "-e", "minibatch",
            "--batch-size", "64", "--max-samples", "256", "--device", "cpu", "--threads", "1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    assert "linear CKA" in res.stdout and "minibatch CKA" in res.stdout and f"wrote {out}" in res.stdout
    rows = pq.read_table(out).to_pylist()
    assert len(rows) == 8 and {r["estimator"] for r in rows} == {"linear", "minibatch"}

    again = runner.invoke(app, [*args, "--quiet"])
    assert again.exit_code == 0 and again.stdout == "" and "skipped" in again.stderr
