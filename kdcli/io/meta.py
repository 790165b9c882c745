"""Artifact metadata codec: safetensors headers and Parquet schemas hold str -> str maps,
so structured values are stored as JSON text."""

from __future__ import annotations

import json


def encode(metadata: dict) -> dict[str, str]:
    return {k: v if isinstance(v, str) else json.dumps(v, sort_keys=True, default=str)
            for k, v in metadata.items()}


def decode(raw: dict) -> dict:
    """Keys and values as text (bytes from Parquet are decoded); JSON values parsed."""
    out = {}
    for k, v in raw.items():
        k = k.decode() if isinstance(k, bytes) else k
        v = v.decode() if isinstance(v, bytes) else v
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out
