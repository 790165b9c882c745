"""Autograd plumbing for backends that compute the gradient in the forward pass.

A fused backend reads the logits once for the loss and the gradient together,
so it has d(loss)/d(student) before anyone calls backward. `attach_grad` returns
the loss as a node whose backward hands that tensor out, rescaled only when the
incoming gradient is not 1 (loss scaling, gradient accumulation).
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable


class _PrecomputedGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, student: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
        # save_for_backward, not a ctx attribute: the engine then frees the saved
        # tensor with the graph and AccumulateGrad can adopt it as .grad without a copy.
        ctx.save_for_backward(grad)
        return loss.clone()

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output: torch.Tensor):
        (grad,) = ctx.saved_tensors
        # One host sync per step; a multiply would cost a full pass over [N, V].
        scale = grad_output.item()
        if scale != 1.0:
            grad = grad * scale  # computed in float32 for bf16/fp16, rounded once
        return grad, None, None


def attach_grad(student: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """`loss` (0-d, no graph) as a function of `student` whose gradient is `grad`."""
    if not student.requires_grad:
        return loss
    return _PrecomputedGrad.apply(student, loss, grad)
