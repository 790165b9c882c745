"""Model layers by name, for feature comparisons (`kdcli cka`): listing them, the default
(penultimate) representation, and forward hooks that keep their outputs.

A layer is named by its module name, for the module's output, or NAME:in for the
module's input. The default is the penultimate representation: `features` for
kdcli's own models, else the input of the last nn.Linear (torchvision classifiers).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from kdcli.errors import ConfigError
from kdcli.task import Task


@dataclass(frozen=True)
class Layer:
    name: str  # what --layers-a / --layers-b take
    module: str  # the module's class
    shape: tuple[int, ...] | None  # per row; None when the output is not a tensor
    calls: int  # times it runs per forward pass (a selectable layer runs once)
    default: bool  # the penultimate representation

    @property
    def size(self) -> int | None:
        return None if self.shape is None else math.prod(self.shape)


def default_layer(model: torch.nn.Module) -> str | None:
    """The penultimate representation: `features` of kdcli models, else the last Linear's input."""
    modules = dict(model.named_modules())
    if isinstance(modules.get("features"), torch.nn.Module) and isinstance(modules.get("head"), torch.nn.Module):
        return "features"
    linears = [name for name, m in modules.items() if name and isinstance(m, torch.nn.Linear)]
    return f"{linears[-1]}:in" if linears else None


def list_layers(model: torch.nn.Module, x: torch.Tensor, task: Task) -> list[Layer]:
    """Every module's output (plus the default layer) with its feature size per row, from one
    forward pass of `x`: model inputs of real samples (a few suffice)."""
    default = default_layer(model)
    names = [n for n, _ in model.named_modules() if n]
    if default and default.endswith(":in"):
        names.append(default)
    with LayerHooks(model, names, task, strict=False) as hooks, torch.inference_mode():
        model(x)
    modules = dict(model.named_modules())
    return [Layer(name, type(modules[name.partition(":")[0]]).__name__, hooks.shapes.get(name),
                  hooks.calls.get(name, 0), name == default) for name in names]


def resolve_layers(model: torch.nn.Module, requested: tuple[str, ...], flag: str, label: str) -> list[str]:
    if not requested:
        default = default_layer(model)
        if default is None:
            raise ConfigError(f"{flag}: {label}'s model has no `features` module and no nn.Linear, so "
                              f"it has no default penultimate layer; name one (kdcli cka --list-layers)")
        return [default]
    valid = [n for n, _ in model.named_modules() if n]
    for name in requested:
        base, sep, suffix = name.partition(":")
        if base not in valid or (sep and suffix != "in"):
            raise ConfigError(f"{flag} {name!r}: {label}'s model has no such layer; valid names are "
                              f"{', '.join(valid)} (each also as NAME:in for the module's input)")
    return list(requested)


class LayerHooks:
    """Forward hooks keeping a float32 copy of each named layer's output (or input), one feature
    vector per row of the task ([B, D] per sample, [B·T, D] per token position).

    The copy matters: an inplace ReLU after a hooked module would otherwise change it.
    """

    def __init__(self, model: torch.nn.Module, names: list[str], task: Task, strict: bool = True,
                 flag: str = "", label: str = "", keep_output: bool = False):
        self.model, self.names, self.task = model, names, task
        self.strict, self.flag, self.label = strict, flag, label
        self.out: dict[str, torch.Tensor] = {}
        self.shapes: dict[str, tuple[int, ...] | None] = {}
        self.calls: dict[str, int] = {}
        self.handles = []
        self.keep_output = keep_output  # keep the model's output of the last forward() (collapse)
        self.output: torch.Tensor | None = None

    def __enter__(self) -> LayerHooks:
        modules = dict(self.model.named_modules())
        for name in self.names:
            base, _, suffix = name.partition(":")
            if suffix == "in":
                hook = self._pre_hook(name)
                self.handles.append(modules[base].register_forward_pre_hook(hook))
            else:
                hook = self._hook(name)
                self.handles.append(modules[base].register_forward_hook(hook))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()

    def _pre_hook(self, name: str):
        return lambda _m, args: self._keep(name, args[0] if args else None)

    def _hook(self, name: str):
        return lambda _m, _args, output: self._keep(name, output)

    def _keep(self, name: str, value) -> None:
        self.calls[name] = self.calls.get(name, 0) + 1
        rows = "[batch, ...]" if self.task.row_dims == 1 else "[batch, positions, ...]"
        if not isinstance(value, torch.Tensor) or value.ndim < self.task.row_dims:
            self.shapes[name] = None
            if self.strict:
                what = f"a tensor of shape {tuple(value.shape)}" if isinstance(value, torch.Tensor) \
                    else f"a {type(value).__name__}"
                raise ConfigError(f"{self.flag} {name}: in {self.label}'s model this gives {what}, "
                                  f"not a {rows} tensor with a row per {self.task.row_name}; "
                                  "choose another layer")
            return
        self.shapes[name] = tuple(value.shape[self.task.row_dims:])
        if self.strict:
            self.out[name] = self.task.feature_rows(value.detach()).to(torch.float32, copy=True)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        self.out.clear()
        self.calls.clear()
        output = self.model(x)
        self.output = output if self.keep_output else None  # held only when asked: LM logits are large
        for name in self.names:
            calls = self.calls.get(name, 0)
            if calls != 1:
                why = "does not run in the forward pass" if calls == 0 else \
                    f"runs {calls} times per forward pass (a shared module), so its output is ambiguous"
                raise ConfigError(f"{self.flag} {name}: in {self.label}'s model this layer {why}; "
                                  "choose another (kdcli cka --list-layers)")
        return {name: self.out[name] for name in self.names}  # as requested, not as they ran
