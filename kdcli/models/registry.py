"""Model registry: name -> builder from plain arguments, recorded in checkpoints.

Every builder takes `num_classes` and `input_shape` (from the dataset) plus its
own keyword arguments; `resolve_model_args` fills in the defaults so that the
arguments stored in a checkpoint rebuild exactly the same model. Names starting
with `tv:` build a torchvision model by name (random init; nothing downloads).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from torch import nn

from kdcli.errors import ConfigError

MODELS: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str):
    def deco(fn):
        MODELS[name] = fn
        return fn
    return deco


def model_names() -> list[str]:
    from kdcli.models import gpt, vit, zoo  # noqa: F401  (registers the built-in models)

    return sorted(MODELS)


def resolve_model_args(name: str, num_classes: int, input_shape, extra: dict | None = None) -> dict:
    """The full argument dict for `build_model(name, **args)`, defaults included."""
    model_names()
    args = {"num_classes": int(num_classes), "input_shape": [int(s) for s in input_shape]}
    extra = dict(extra or {})
    if name.startswith("tv:"):
        return {**args, **extra}
    if name not in MODELS:
        raise ConfigError(f"--model: unknown model {name!r}; choose one of {', '.join(model_names())}, "
                          "or tv:NAME for a torchvision model")
    params = inspect.signature(MODELS[name]).parameters
    unknown = sorted(set(extra) - set(params))
    if unknown:
        options = [p for p in params if p not in args]
        raise ConfigError(f"--model-arg: model {name!r} takes no argument {', '.join(unknown)}; "
                          f"it accepts {', '.join(options) or 'none'}")
    for p in params.values():
        if p.name not in args and p.default is not inspect.Parameter.empty:
            args[p.name] = p.default
    return {**args, **extra}


def build_model(name: str, **args) -> nn.Module:
    model_names()
    if name.startswith("tv:"):
        return _torchvision_model(name[3:], **args)
    if name not in MODELS:
        raise ConfigError(f"--model: unknown model {name!r}; choose one of {', '.join(model_names())}")
    try:
        return MODELS[name](**args)
    except (TypeError, ValueError, RuntimeError) as exc:  # e.g. channels=0
        raise ConfigError(f"--model {name}: cannot build with {args} ({exc})") from None


def _torchvision_model(name: str, num_classes: int, input_shape, **kwargs) -> nn.Module:
    import torchvision

    if name not in torchvision.models.list_models(module=torchvision.models):
        raise ConfigError(f"--model tv:{name}: torchvision has no classification model {name!r}")
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"--model-arg: torchvision model {name!r} cannot be built with "
                          f"{kwargs} ({exc})") from None
