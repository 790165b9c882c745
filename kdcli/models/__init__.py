"""Model registry."""

from kdcli.models.registry import build_model, model_names, resolve_model_args

__all__ = ["build_model", "model_names", "resolve_model_args"]
