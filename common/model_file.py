"""The model file: weights as safetensors plus settings as metadata (loading it executes no code).

Works on state dicts, without building the network (no MONAI import): the coordinator writes its
checkpoints from the aggregated weights with this module alone.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from fedaaa.common.errors import ConfigError
from fedaaa.common.settings import ArchSettings, PreprocessSettings

FORMAT = "fedaaa-model"
FORMAT_VERSION = "1"


@dataclass(frozen=True)
class ModelMeta:
    """Everything a model file holds besides its weights."""

    arch: ArchSettings = ArchSettings()
    preprocess: PreprocessSettings = PreprocessSettings()
    threshold: float = 0.5
    round: int = 0
    summary: Mapping[str, Any] = field(default_factory=dict)


def write_model_file(path: str | Path, state: Mapping[str, torch.Tensor], meta: ModelMeta) -> Path:
    """Write ``state`` and ``meta`` atomically (a temporary file renamed into place)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "architecture": meta.arch.to_json(),
        "preprocess": meta.preprocess.to_json(),
        "threshold": repr(float(meta.threshold)),
        "round": str(int(meta.round)),
        "summary": json.dumps(dict(meta.summary)),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def read_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelMeta]:
    """Weights and settings of a file written by :func:`write_model_file`; a :class:`ConfigError` if not one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: model file does not exist")
    try:
        with safe_open(str(path), framework="pt") as f:
            raw = f.metadata() or {}
        if raw.get("format") != FORMAT:
            raise ConfigError(f"{path}: not a FedAAA model file (no fedaaa metadata)")
        meta = ModelMeta(
            arch=ArchSettings.from_json(raw["architecture"]),
            preprocess=PreprocessSettings.from_json(raw["preprocess"]),
            threshold=float(raw.get("threshold", 0.5)),
            round=int(raw.get("round", 0)),
            summary=json.loads(raw.get("summary", "{}")),
        )
        state = load_file(str(path))
    except ConfigError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable FedAAA model file ({type(exc).__name__})") from exc
    return state, meta
