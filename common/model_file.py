"""The model file: weights as safetensors plus settings as metadata (loading it executes no code).

Works on state dicts, without building the network (no MONAI import): the coordinator writes its
checkpoints from the aggregated weights with this module alone.

A model file is untrusted input: :func:`read_model_file` checks the file's size and safetensors header
and :func:`validate_metadata` checks every setting against its schema (types, ranges, finite numbers,
sizes of the network and of its input) before any tensor is read or network built. Every failure is a
:class:`ConfigError` of one sentence, ``<file>: <reason>``.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from fedaaa.common.calibration import Calibration
from fedaaa.common.errors import ConfigError, describe
from fedaaa.common.settings import ArchSettings, PreprocessSettings

FORMAT = "fedaaa-model"
FORMAT_VERSION = "2"  # 2: the segmentation network, its probability calibration
KEYS = (
    "format",
    "format_version",
    "architecture",
    "preprocess",
    "threshold",
    "calibration",
    "round",
    "summary",
)

MAX_FILE_BYTES = 1 << 30  # far above any sane AAANet (MAX_PARAMETERS float64 weights are 400 MB)
MAX_HEADER_BYTES = 1 << 20  # the safetensors JSON header: tensor names, shapes, offsets and the metadata
MAX_TENSORS = 1024
MAX_PARAMETERS = 50_000_000  # weights of the architecture, estimated before the network is built
MAX_ACTIVATIONS = 1 << 27  # feature-map values of one input through all stages (512 MB as float32)
MAX_SUMMARY_BYTES = 64 * 1024
MAX_SUMMARY_DEPTH = 32
MAX_ROUND = 1_000_000
FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


@dataclass(frozen=True)
class ModelMeta:
    """Everything a model file holds besides its weights."""

    arch: ArchSettings = ArchSettings()
    preprocess: PreprocessSettings = PreprocessSettings()
    threshold: float = 0.5
    round: int = 0
    summary: Mapping[str, Any] = field(default_factory=dict)
    calibration: Calibration = Calibration()


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
        "calibration": meta.calibration.to_json(),
        "round": str(int(meta.round)),
        "summary": json.dumps(dict(meta.summary)),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(tensors, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def _depth(value: object) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        v, d = stack.pop()
        deepest = max(deepest, d)
        children = v.values() if isinstance(v, dict) else v if isinstance(v, list) else ()
        stack.extend((c, d + 1) for c in children)
    return deepest


def _summary(text: object) -> dict[str, Any]:
    if not isinstance(text, str) or len(text.encode("utf-8", "surrogatepass")) > MAX_SUMMARY_BYTES:
        raise ValueError(f"the summary must be JSON text of at most {MAX_SUMMARY_BYTES // 1024} KB")
    try:
        summary = json.loads(text)  # NaN is allowed: an undefined metric of a round is recorded as NaN
    except (ValueError, RecursionError):
        raise ValueError("the summary is not valid JSON") from None
    if not isinstance(summary, dict):
        raise ValueError("the summary must be a JSON object")
    if _depth(summary) > MAX_SUMMARY_DEPTH:
        raise ValueError(f"the summary nests deeper than {MAX_SUMMARY_DEPTH} levels")
    return summary


def _threshold(text: object) -> float:
    value = float(text) if isinstance(text, str) and len(text) <= 32 and re.fullmatch(r"[0-9eE.+-]+", text) else None
    if value is None or not math.isfinite(value) or not 0.0 < value < 1.0:
        quoted = json.dumps(text)[:40] if isinstance(text, str) else type(text).__name__
        raise ValueError(f"the decision threshold must be a number between 0 and 1, not {quoted}")
    return value


def _round(text: object) -> int:
    if not isinstance(text, str) or not re.fullmatch(r"[0-9]{1,7}", text) or int(text) > MAX_ROUND:
        quoted = json.dumps(text)[:40] if isinstance(text, str) else type(text).__name__
        raise ValueError(f"the round must be a whole number from 0 to {MAX_ROUND}, not {quoted}")
    return int(text)


def activation_count(arch: ArchSettings) -> int:
    """Feature-map values of one patch through the U-Net's stages, down and up (valid settings only)."""
    size, total = list(arch.patch_size), 0
    for c in arch.channels:
        total += 2 * (1 + arch.res_units) * c * math.prod(size)
        size = [max(1, s // 2) for s in size]
    return total


def validate_metadata(raw: Mapping[str, object]) -> ModelMeta:
    """The settings of a model file's metadata, checked against the schema before anything is built.

    Raises ValueError with a one-sentence reason (without the file name) when a key is missing, of the
    wrong type or out of its range, a number is not finite, or the network or its input would be too
    large for memory (its patch size).
    """
    if not isinstance(raw, Mapping) or raw.get("format") != FORMAT:
        raise ValueError(f"not a FedAAA model file (its metadata lack format {FORMAT})")
    missing = [k for k in KEYS if not isinstance(raw.get(k), str)]
    if missing:
        raise ValueError(f"the model metadata lacks {', '.join(missing)}")
    if raw["format_version"] != FORMAT_VERSION:
        version = json.dumps(raw["format_version"])[:20]
        raise ValueError(f"model format version {version} is not supported (this FedAAA reads {FORMAT_VERSION})")
    arch = ArchSettings.from_json(raw["architecture"])
    if arch.parameter_count() > MAX_PARAMETERS:
        raise ValueError(f"the architecture has more than {MAX_PARAMETERS} weights")
    preprocess = PreprocessSettings.from_json(raw["preprocess"])
    if activation_count(arch) > MAX_ACTIVATIONS:
        raise ValueError("the architecture and its patch size need too much memory per input")
    return ModelMeta(
        arch=arch,
        preprocess=preprocess,
        threshold=_threshold(raw["threshold"]),
        round=_round(raw["round"]),
        summary=_summary(raw["summary"]),
        calibration=Calibration.from_json(raw["calibration"]),
    )


def _header_size(path: Path) -> int:
    """Check the file's size and its safetensors header length before the library maps it."""
    size = path.stat().st_size
    if size > MAX_FILE_BYTES:
        raise ValueError(f"the file is larger than {MAX_FILE_BYTES >> 30} GB")
    with path.open("rb") as f:
        head = f.read(8)
    if len(head) < 8:
        raise ValueError("not a safetensors file (too short)")
    (n,) = struct.unpack("<Q", head)
    if 8 + n > size:
        raise ValueError("not a safetensors file (its header length points past the end of the file)")
    if n > MAX_HEADER_BYTES:
        raise ValueError(f"the safetensors header is larger than {MAX_HEADER_BYTES >> 20} MB")
    return size


def read_model_file(path: str | Path) -> tuple[dict[str, torch.Tensor], ModelMeta]:
    """Weights and settings of a file written by :func:`write_model_file`; a :class:`ConfigError` if not one.

    The metadata are validated (:func:`validate_metadata`) and the tensors' names, dtypes (floating
    point) and sizes read from the header before any weight is read. Whether the weights fit the
    architecture and are finite is :func:`fedaaa.common.model.load_model`'s check.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"{path}: model file does not exist")
    if not path.is_file():
        raise ConfigError(f"{path}: a model file must be a regular file")
    try:
        _header_size(path)
        with safe_open(str(path), framework="pt") as f:
            meta = validate_metadata(f.metadata() or {})
            names = list(f.keys())
            if len(names) > MAX_TENSORS:
                raise ValueError(f"the file holds more than {MAX_TENSORS} tensors")
            total = 0
            for name in names:
                sl = f.get_slice(name)
                dtype = sl.get_dtype()
                if dtype not in FLOAT_DTYPES:
                    raise ValueError(f"weight {json.dumps(name)[:80]} is of type {dtype}, not floating point")
                total += math.prod(sl.get_shape())
            if total > MAX_PARAMETERS:
                raise ValueError(f"the file holds more than {MAX_PARAMETERS} weights")
            state = {name: f.get_tensor(name) for name in names}
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except (SafetensorError, OSError, RuntimeError, TypeError, OverflowError) as exc:
        raise ConfigError(
            f"{path}: not a readable FedAAA model file ({type(exc).__name__}: {describe(exc, 120)})"
        ) from exc
    return state, meta
