"""The knowledge-distillation loss behind one interface, with pluggable backends.

    L = mean over kept rows of  α·τ²·KL(softmax(t/τ) ‖ softmax(s/τ)) + (1−α)·CE(y, s)

τ² keeps the gradient scale comparable across temperatures (Hinton et al. 2015),
and it is applied whatever α is (unlike tools that add it only when a CE term is
present). The CE term is at τ = 1 on the raw student logits, with optional label
smoothing. The mean is over rows (samples, or tokens for language models) that
`mask` keeps; with no kept row the loss is 0.

Backends, all computing that loss and its gradient with respect to the student:
- `eager`: the readable reference (losses/eager.py), differentiated by autograd.
- `fused`: one sweep over the logits that writes the loss and the gradient
  together, compiled by torch.compile for large calls (losses/fused.py).
- `triton`: the same fused maths as a Triton kernel, for CUDA (losses/triton_kd.py).
`auto` picks triton on CUDA, fused where torch.compile can build kernels, eager
otherwise; `resolve_backend` says which, for provenance.
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Callable

import torch
import torch.nn.functional as F

from kdcli.errors import ConfigError
from kdcli.losses import fused
from kdcli.losses.eager import eager_loss


def _triton_loss(*args, **kwargs) -> torch.Tensor:
    from kdcli.losses import triton_kd  # imports triton: only when asked for

    return triton_kd.triton_loss(*args, **kwargs)


# name -> fn(student[N, V], teacher[N, V], *, tau, alpha, labels, mask, label_smoothing)
#         -> mean loss over kept rows (0-d), differentiable in student
BACKENDS: dict[str, Callable[..., torch.Tensor]] = {
    "eager": eager_loss,
    "fused": fused.fused_loss,
    "triton": _triton_loss,
}


@functools.cache
def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def triton_usable(device: torch.device | str) -> bool:
    """Whether the Triton kernel can run on tensors of `device` (without importing triton).

    On the CPU only under TRITON_INTERPRET=1, Triton's interpreter, which is how
    the kernel is tested without a GPU (slowly: never picked by `auto` there).
    """
    if not _triton_installed():
        return False
    if os.environ.get("TRITON_INTERPRET") == "1":
        return True
    return torch.device(device).type == "cuda" and torch.cuda.is_available()


def resolve_backend(backend: str, device: torch.device | str = "cpu") -> str:
    """The backend `auto` (or a named one) resolves to on this device."""
    if backend == "auto":
        if torch.device(device).type == "cuda":
            return "triton" if triton_usable(device) else "eager"
        return "fused" if fused.compile_available() else "eager"
    if backend not in BACKENDS:
        raise ConfigError(f"--kd-backend {backend!r}: choose auto or one of {', '.join(sorted(BACKENDS))}")
    if backend == "triton" and not triton_usable(device):
        raise ConfigError(f"--kd-backend triton needs a CUDA device and the triton package "
                          f"(device here: {torch.device(device)}); use auto, fused or eager")
    return backend


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, tau: float,
            alpha: float = 1.0, labels: torch.Tensor | None = None, mask: torch.Tensor | None = None,
            backend: str = "auto", label_smoothing: float = 0.0) -> torch.Tensor:
    """Mean KD loss as a 0-d tensor, differentiable with respect to `student_logits`.

    student_logits, teacher_logits: [N, V] (any leading shape is flattened to rows).
    labels: [N] class ids, needed when alpha < 1. mask: [N] bool, True = row counts.
    """
    if not tau > 0:
        raise ConfigError(f"--tau must be > 0, got {tau}")
    if not 0 <= alpha <= 1:
        raise ConfigError(f"--alpha must be in [0, 1], got {alpha}")
    if student_logits.shape != teacher_logits.shape:
        raise ConfigError(f"student logits {tuple(student_logits.shape)} and teacher logits "
                          f"{tuple(teacher_logits.shape)} differ in shape")
    if alpha < 1 and labels is None:
        raise ConfigError("kd_loss: labels are needed when alpha < 1")
    vocab = student_logits.shape[-1]
    s, t = student_logits.reshape(-1, vocab), teacher_logits.reshape(-1, vocab)
    labels = None if labels is None else labels.reshape(-1)
    if alpha == 0 and mask is None:
        # Exactly the cross-entropy train-labels uses, so α = 0 reproduces it bit for bit.
        return F.cross_entropy(s, labels, label_smoothing=label_smoothing)
    mask = None if mask is None else mask.reshape(-1)
    name = resolve_backend(backend, s.device)
    if len(s) == 0:  # no rows: 0, as with no kept rows
        return s.sum().to(torch.promote_types(s.dtype, torch.float32))
    return BACKENDS[name](s, t, tau=float(tau), alpha=float(alpha), labels=labels, mask=mask,
                          label_smoothing=float(label_smoothing))
