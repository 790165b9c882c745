"""Every KD loss backend against a float64 truth computed here.

The rule, per element of the loss and of the gradient: |backend − truth| ≤
|eager − truth| + tol·scale, with tol 5e-4 (float32), 1e-2 (bfloat16), 1e-3
(float16) and scale the largest |truth| of that tensor. The scale makes tol a
relative tolerance: gradient elements shrink as 1/N, and an absolute 5e-4 would
accept any gradient at all. A non-finite truth (a student −inf where the teacher
has mass makes the loss +inf) must be matched exactly.

The Triton kernel runs in Triton's interpreter on the CPU (TRITON_INTERPRET=1).
The interpreter is chosen when a kernel is decorated, so the kernel runs in a
child process that sets the variable before importing triton and writes its
results for the tests here; this process never imports triton. Tests that need
a GPU are marked `gpu`; compiling the fused path for every dtype is `slow`.
"""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from kdcli.errors import ConfigError
from kdcli.losses import fused, kd_loss, resolve_backend

ROOT = Path(__file__).resolve().parents[1]
TOL = {torch.float32: 5e-4, torch.bfloat16: 1e-2, torch.float16: 1e-3, torch.float64: 1e-9}


def case(n, v, tau=2.0, alpha=1.0, eps=0.0, dtype=torch.float32, mask="none", inf="none",
         grad_out=1.0, seed=0, **launch):
    """One test input: shape, loss options, and which rows/elements are masked or −inf."""
    return dict(n=n, v=v, tau=tau, alpha=alpha, eps=eps, dtype=dtype, mask=mask, inf=inf,
                grad_out=grad_out, seed=seed, launch=launch)


CASES = {
    **{f"41x401-tau{tau}": case(41, 401, tau=tau) for tau in (0.1, 1.0, 4.0, 20.0, 100.0)},
    "7x1271-mix-masked-teacher-inf-grad0.37": case(7, 1271, tau=4.0, alpha=0.5, eps=0.1, mask="some",
                                                   inf="teacher", grad_out=0.37),
    "3x32003-both-inf": case(3, 32003, tau=2.0, inf="both"),
    "2x128256-tau20": case(2, 128256, tau=20.0),
    "41x401-ce-only-masked": case(41, 401, alpha=0.0, eps=0.1, mask="some"),
    "41x401-alpha0.3": case(41, 401, tau=4.0, alpha=0.3),
    "9x37-all-masked": case(9, 37, mask="all", grad_out=2.0),
    "6x50-student-inf": case(6, 50, inf="student"),
    "1x10-single-row": case(1, 10, tau=0.1),
}
LOW_PRECISION = {
    "41x401-bf16": case(41, 401, tau=4.0, dtype=torch.bfloat16),
    "41x401-fp16-mix": case(41, 401, tau=4.0, alpha=0.5, dtype=torch.float16, mask="some"),
    "7x1271-bf16-teacher-inf": case(7, 1271, tau=1.0, dtype=torch.bfloat16, inf="teacher"),
}
# The kernel's other paths, with small blocks so the loops and the merge run.
TRITON_ONLY = {
    "3x320-pieces3-block64": case(3, 320, tau=4.0, mask="some", inf="teacher", block=64, pieces=3),
    "5x300-block64-mix": case(5, 300, tau=2.0, alpha=0.3, eps=0.1, block=64),
    "2x1000-pieces4-ce": case(2, 1000, alpha=0.0, eps=0.1, mask="some", block=128, pieces=4),
}


def make_inputs(c):
    g = np.random.default_rng(c["seed"])
    n, v = c["n"], c["v"]
    s = torch.tensor(3 * g.standard_normal((n, v)), dtype=torch.float32)
    t = torch.tensor(3 * g.standard_normal((n, v)), dtype=torch.float32)
    y = torch.tensor(g.integers(0, v, n))
    cols = torch.tensor(g.choice(v, size=max(1, v // 7), replace=False))
    if c["inf"] in ("teacher", "both"):
        t[::2, cols] = float("-inf")  # the teacher rules those classes out
    if c["inf"] == "both":
        s[::2, cols] = float("-inf")  # and so does the student
    if c["inf"] == "student":
        s[1, cols] = float("-inf")  # the student rules out what the teacher allows: KL = +inf
    mask = None
    if c["mask"] != "none":
        mask = torch.zeros(n, dtype=torch.bool) if c["mask"] == "all" else torch.arange(n) % 3 != 1
        t[~mask] = float("nan")  # padding: garbage that must not leak
        s[~mask] = float("-inf")
        y[~mask] = -100
    return s.to(c["dtype"]), t.to(c["dtype"]), y, mask


def truth(c, s, t, y, mask):
    """Loss and d loss/d s in float64, from the textbook formulas, masked rows dropped."""
    s64, t64 = s.double(), t.double()
    keep = torch.ones(len(s), dtype=torch.bool, device=s.device) if mask is None else mask
    grad = torch.zeros_like(s64)
    n_kept = int(keep.sum())
    if n_kept == 0:
        return torch.zeros((), dtype=torch.float64, device=s.device), grad
    a, b, tau, alpha, eps = s64[keep], t64[keep], c["tau"], c["alpha"], c["eps"]

    def log_softmax(z):
        z = z - z.max(1, keepdim=True).values
        return z - z.exp().sum(1, keepdim=True).log()

    log_q, log_p = log_softmax(a / tau), log_softmax(b / tau)
    p = log_p.exp()
    kl = torch.where(p > 0, p * (log_p - log_q), 0.0).sum(1)
    log_q1 = log_softmax(a)
    target = torch.full_like(a, eps / a.shape[1])
    target[torch.arange(n_kept, device=s.device), y[keep]] += 1 - eps
    ce = -torch.where(target > 0, target * log_q1, 0.0).sum(1)
    rows = alpha * tau**2 * kl + (1 - alpha) * ce
    grad[keep] = (alpha * tau * (log_q.exp() - p) + (1 - alpha) * (log_q1.exp() - target)) / n_kept
    return rows.mean(), grad * c["grad_out"]


def run(c, backend, s, t, y, mask, **kw):
    """(loss, gradient) of one backend; backward with incoming gradient c["grad_out"]."""
    x = s.clone().requires_grad_()
    if backend == "fused-compiled":
        loss = fused.fused_loss(x, t, tau=c["tau"], alpha=c["alpha"], labels=y, mask=mask,
                                label_smoothing=c["eps"], compiled=True)
    elif kw:  # the kernel with a forced launch plan
        from kdcli.losses.triton_kd import triton_loss

        loss = triton_loss(x, t, tau=c["tau"], alpha=c["alpha"], labels=y, mask=mask,
                           label_smoothing=c["eps"], **kw)
    else:
        loss = kd_loss(x, t, tau=c["tau"], alpha=c["alpha"], labels=y, mask=mask, backend=backend,
                       label_smoothing=c["eps"])
    loss.backward(torch.tensor(c["grad_out"], dtype=loss.dtype, device=loss.device))
    return loss.detach(), x.grad


def assert_no_worse(c, got, ref, true, what):
    """|got − true| ≤ |ref − true| + tol·max|true|, element by element."""
    got, ref, true = got.double().cpu(), ref.double().cpu(), true.double().cpu()
    finite = torch.isfinite(true)
    assert torch.equal(got[~finite], true[~finite]), f"{what}: non-finite truth not matched"
    scale = true[finite].abs().max() if finite.any() else torch.tensor(0.0)
    excess = (got - true).abs() - (ref - true).abs() - TOL[c["dtype"]] * scale
    worst = excess[finite].max() if finite.any() else torch.tensor(-1.0)
    assert worst <= 0, f"{what}: worse than eager by {worst.item():.3g} beyond tol"


def check(c, backend_out, eager_out, inputs):
    true_loss, true_grad = truth(c, *inputs)
    assert backend_out[0].dim() == 0
    assert_no_worse(c, backend_out[0], eager_out[0], true_loss, "loss")
    assert_no_worse(c, backend_out[1], eager_out[1], true_grad, "gradient")
    mask = inputs[3]
    if mask is not None:
        dropped = ~mask.to(backend_out[1].device)
        assert torch.all(backend_out[1][dropped] == 0), "masked rows must get a zero gradient"


# ---------------------------------------------------------------- fused, in process


@pytest.mark.parametrize("name", [*CASES, *LOW_PRECISION])
def test_fused_matches_truth(name):
    c = {**CASES, **LOW_PRECISION}[name]
    inputs = make_inputs(c)
    check(c, run(c, "fused", *inputs), run(c, "eager", *inputs), inputs)


def test_fused_compiled_matches_truth():
    """The Inductor-compiled kernel (one compile: float32, α = 1; dynamic shapes)."""
    if not fused.compile_available():
        pytest.skip("no C++ compiler for torch.compile")
    for name in ["41x401-tau100.0", "41x401-tau0.1", "3x32003-both-inf", "2x128256-tau20",
                 "9x37-all-masked", "6x50-student-inf"]:
        c = CASES[name]
        inputs = make_inputs(c)
        check(c, run(c, "fused-compiled", *inputs), run(c, "eager", *inputs), inputs)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["7x1271-mix-masked-teacher-inf-grad0.37", "41x401-ce-only-masked",
                                  *LOW_PRECISION])
def test_fused_compiled_other_variants(name):
    if not fused.compile_available():
        pytest.skip("no C++ compiler for torch.compile")
    c = {**CASES, **LOW_PRECISION}[name]
    inputs = make_inputs(c)
    check(c, run(c, "fused-compiled", *inputs), run(c, "eager", *inputs), inputs)


def test_fused_gradcheck_float64():
    s = torch.randn(5, 6, dtype=torch.float64, requires_grad=True)
    t = torch.randn(5, 6, dtype=torch.float64)
    y, mask = torch.randint(0, 6, (5,)), torch.tensor([1, 1, 0, 1, 1], dtype=torch.bool)
    assert torch.autograd.gradcheck(
        lambda x: kd_loss(x, t, tau=2.5, alpha=0.7, labels=y, mask=mask, backend="fused",
                          label_smoothing=0.1), (s,))


def test_fused_gradient_survives_retain_graph_and_is_adopted():
    s = torch.randn(4, 9, requires_grad=True)
    loss = kd_loss(s, torch.randn(4, 9), tau=2.0, backend="fused")
    loss.backward(retain_graph=True)
    first = s.grad.clone()
    loss.backward(torch.tensor(3.0))  # accumulates 3× the gradient
    torch.testing.assert_close(s.grad, 4 * first)


def test_fused_without_student_grad_is_just_the_loss():
    s, t = torch.randn(4, 9), torch.randn(4, 9)
    loss = kd_loss(s, t, tau=2.0, backend="fused")
    assert loss.grad_fn is None
    torch.testing.assert_close(loss, kd_loss(s, t, tau=2.0, backend="eager"))


def test_fused_falls_back_when_compilation_fails(monkeypatch):
    def broken():
        def compiled(*args):
            raise RuntimeError("no compiler today")
        return compiled

    monkeypatch.setattr(fused, "_compiled", broken)
    monkeypatch.setattr(fused, "_compile_failed", False)
    monkeypatch.setattr(fused, "compile_available", lambda: True)
    c = CASES["41x401-tau4.0"]
    inputs = make_inputs(c)
    with pytest.warns(RuntimeWarning, match="compile failed"):
        out = run(c, "fused-compiled", *inputs)
    check(c, out, run(c, "eager", *inputs), inputs)
    assert fused._compile_failed


class _Allocations(TorchDispatchMode):
    """Element counts of the new tensors each op returns (aliases of its inputs don't count)."""

    def __init__(self):
        super().__init__()
        self.sizes = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        inputs = {a.untyped_storage().data_ptr() for a in tree_leaves((args, kwargs))
                  if isinstance(a, torch.Tensor)}
        self.sizes += [x.numel() for x in tree_leaves(out)
                       if isinstance(x, torch.Tensor) and x.untyped_storage().data_ptr() not in inputs]
        return out


def test_fused_allocates_nothing_row_sized_but_the_gradient():
    """Uncompiled path, forward and backward: one [N, V] tensor, the rest one block of rows."""
    n, vocab = 64, 4000
    s, t = torch.randn(n, vocab, requires_grad=True), torch.randn(n, vocab)
    with _Allocations() as seen:
        fused.fused_loss(s, t, tau=2.0, alpha=0.5, labels=torch.zeros(n, dtype=torch.long), mask=None,
                         label_smoothing=0.0, compiled=False).backward()
    block = max(1, fused.EAGER_BLOCK_ELEMENTS // vocab) * vocab
    sizes = sorted(seen.sizes)
    assert sizes[-1] == n * vocab and sizes[-2] <= block < n * vocab


# ---------------------------------------------------------------- triton, interpreted


def _triton_child(out: str) -> None:
    """Runs in the child process (TRITON_INTERPRET=1): every case, saved for the parent."""
    from safetensors.torch import save_file

    results = {}
    np.seterr(all="ignore")  # the interpreter is numpy: −inf − −inf in masked-off lanes warns
    warnings.simplefilter("ignore")
    for name, c in {**CASES, **TRITON_ONLY}.items():
        loss, grad = run(c, "triton", *make_inputs(c), **c["launch"])
        results[f"{name}/loss"], results[f"{name}/grad"] = loss.reshape(1), grad
    s = torch.randn(3, 20, dtype=torch.float64, requires_grad=True)
    t = torch.randn(3, 20, dtype=torch.float64)
    y, mask = torch.randint(0, 20, (3,)), torch.tensor([1, 0, 1], dtype=torch.bool)

    def f(x):  # float64 all through: the kernel accumulates in the input's float64
        from kdcli.losses.triton_kd import triton_loss

        return triton_loss(x, t, tau=2.5, alpha=0.7, labels=y, mask=mask, label_smoothing=0.1,
                           block=8, pieces=2)

    # fast_mode: a few directional derivatives instead of one forward per element,
    # each of which is slow in the interpreter.
    ok = torch.autograd.gradcheck(f, (s,), fast_mode=True, raise_exception=False)
    results["gradcheck"] = torch.tensor([float(ok)])
    save_file(results, out)


@pytest.fixture(scope="module")
def triton_results(tmp_path_factory):
    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("triton") / "results.safetensors"
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    code = f"from tests.test_kd_backends import _triton_child; _triton_child({str(out)!r})"
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    from safetensors.torch import load_file

    return load_file(str(out))


@pytest.mark.parametrize("name", [*CASES, *TRITON_ONLY])
def test_triton_interpreted_matches_truth(name, triton_results):
    c = {**CASES, **TRITON_ONLY}[name]
    inputs = make_inputs(c)
    got = triton_results[f"{name}/loss"][0], triton_results[f"{name}/grad"]
    check(c, got, run(c, "eager", *inputs), inputs)


def test_triton_interpreted_gradcheck_float64(triton_results):
    assert triton_results["gradcheck"].item() == 1.0


# ---------------------------------------------------------------- choosing a backend


def test_auto_is_fused_on_cpu_when_it_can_compile(monkeypatch):
    assert resolve_backend("auto", "cpu") == ("fused" if fused.compile_available() else "eager")
    monkeypatch.setattr(fused, "compile_available", lambda: False)
    assert resolve_backend("auto", "cpu") == "eager"


def test_triton_on_cpu_is_refused(monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ConfigError, match="--kd-backend triton needs a CUDA device"):
        resolve_backend("triton", "cpu")


@pytest.mark.parametrize("backend", ["eager", "fused", "auto"])
def test_alpha_zero_without_mask_is_cross_entropy_for_every_backend(backend):
    s, y = torch.randn(16, 10), torch.randint(0, 10, (16,))
    out = kd_loss(s, torch.randn(16, 10), tau=4.0, alpha=0.0, labels=y, backend=backend)
    assert torch.equal(out, F.cross_entropy(s, y))


# ---------------------------------------------------------------- on a GPU


@pytest.mark.gpu
@pytest.mark.parametrize("name", [*CASES, *LOW_PRECISION, *TRITON_ONLY])
def test_triton_on_cuda_matches_truth(name):
    c = {**CASES, **LOW_PRECISION, **TRITON_ONLY}[name]
    s, t, y, mask = make_inputs(c)
    cuda = (s.cuda(), t.cuda(), y.cuda(), None if mask is None else mask.cuda())
    got = run(c, "triton", *cuda, **c["launch"])
    check(c, got, run(c, "eager", *cuda), (s, t, y, mask))


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("n, v", [(4096, 32000), (8, 128256), (1024, 128256)])
def test_triton_on_cuda_large(n, v, dtype):
    c = case(n, v, tau=2.0, dtype=dtype, mask="some", inf="teacher")
    s, t, y, mask = (x if x is None else x.cuda() for x in make_inputs(c))
    got, ref = run(c, "triton", s, t, y, mask), run(c, "eager", s, t, y, mask)
    check(c, got, ref, (s, t, y, mask))


def test_kd_loss_runs_without_importing_triton():
    code = ("import sys, torch; from kdcli.losses import kd_loss; "
            "kd_loss(torch.randn(3, 5), torch.randn(3, 5), tau=2.0); "
            "assert 'triton' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
