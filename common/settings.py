"""Typed settings shared by the hospitals and the coordinator (stdlib only: importing this is free)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

# Bounds of a sane model (checked before a network is built or an input resampled).
MAX_STAGES = 8
MAX_STAGE_CHANNELS = 512
MAX_RES_UNITS = 4
PATCH_RANGE = (8, 256)
SPACING_RANGE_MM = (0.1, 20.0)
ROI_RANGE = (8, 512)
MAX_ROI_VOXELS = 1 << 24  # 256^3: the network input, preprocessed per study in memory
HU_RANGE = (-2000.0, 5000.0)
MAX_SETTINGS_JSON = 4096  # characters of one settings object as JSON


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _check_int(name: str, value: object, lo: int, hi: int) -> int:
    if not _is_int(value) or not lo <= value <= hi:
        raise ValueError(f"{name} must be an integer from {lo} to {hi}, not {_show(value)}")
    return int(value)


def _check_float(name: str, value: object, lo: float, hi: float, *, hi_open: bool = False) -> float:
    ok = _is_number(value) and math.isfinite(value) and lo <= value and (value < hi if hi_open else value <= hi)
    if not ok:
        raise ValueError(
            f"{name} must be a finite number in [{lo:g}, {hi:g}{')' if hi_open else ']'}, not {_show(value)}"
        )
    return float(value)


def _check_list(name: str, value: object, lo: int, hi: int) -> list:
    if not isinstance(value, list | tuple) or not lo <= len(value) <= hi:
        size = f"{lo}" if lo == hi else f"{lo} to {hi}"
        raise ValueError(f"{name} must be a list of {size} values, not {_show(value)}")
    return list(value)


def _show(value: object, limit: int = 40) -> str:
    """A value as a short one-line quote for a reason."""
    text = " ".join(json.dumps(value, default=repr).split()) if not isinstance(value, float) else repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_object(text: object, name: str, keys: tuple[str, ...]) -> dict[str, Any]:
    """``text`` parsed as a JSON object with exactly ``keys``; ValueError with one sentence if not."""
    if not isinstance(text, str) or len(text) > MAX_SETTINGS_JSON:
        raise ValueError(f"{name} must be JSON text of at most {MAX_SETTINGS_JSON} characters")
    try:
        raw = json.loads(text)
    except (ValueError, RecursionError):
        raise ValueError(f"{name} is not valid JSON") from None
    if not isinstance(raw, Mapping):
        raise ValueError(f"{name} must be a JSON object, not {_show(raw)}")
    missing, unknown = sorted(set(keys) - set(raw)), sorted(set(raw) - set(keys))
    if missing or unknown:
        parts = ([f"lacks {', '.join(missing)}"] if missing else []) + (
            [f"has unknown {_show(', '.join(unknown))}"] if unknown else []
        )
        raise ValueError(f"{name} {' and '.join(parts)}")
    return dict(raw)


@dataclass(frozen=True)
class PreprocessSettings:
    """Physical spacing and field of view of the network input (RAS, mm and voxels).

    ``roi_size`` is the in-plane box (x, y) centred on the body, and along z the most slices kept: a
    longer scan keeps its central ``roi_size[2]`` slices, a shorter one all of its own (no padding)."""

    spacing_mm: tuple[float, float, float] = (1.5, 1.5, 3.0)
    roi_size: tuple[int, int, int] = (128, 128, 192)
    hu_window: tuple[float, float] = (-150.0, 450.0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSettings:
        """Parse and validate (:meth:`validate`); a ValueError with a one-sentence reason if not sane."""
        raw = _json_object(text, "preprocess", tuple(f.name for f in fields(cls)))
        for name in raw:
            size = 2 if name == "hu_window" else 3
            raw[name] = tuple(_check_list(f"preprocess {name}", raw[name], size, size))
        settings = cls(**raw)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ValueError (one sentence) unless every value is of its type and in its sane range."""
        spacing = _check_list("preprocess spacing_mm", self.spacing_mm, 3, 3)
        for v in spacing:
            _check_float("preprocess spacing_mm", v, *SPACING_RANGE_MM)
        roi = _check_list("preprocess roi_size", self.roi_size, 3, 3)
        for v in roi:
            _check_int("preprocess roi_size", v, *ROI_RANGE)
        if math.prod(roi) > MAX_ROI_VOXELS:
            raise ValueError(f"preprocess roi_size {_show(roi)} holds more than {MAX_ROI_VOXELS} voxels")
        window = _check_list("preprocess hu_window", self.hu_window, 2, 2)
        lo, hi = (_check_float("preprocess hu_window", v, *HU_RANGE) for v in window)
        if not lo < hi:
            raise ValueError(f"preprocess hu_window {_show(window)} must be a low and a higher HU value")


# Field metadata: False for a TrainSettings field that each hospital derives itself instead of
# receiving it from the coordinator every round.
PER_ROUND = "per_round"


@dataclass(frozen=True)
class TrainSettings:
    """Local training at one hospital for one round; the defaults are the run defaults."""

    local_epochs: int = 2
    batch_size: int = 4
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    patches_per_study: int = 1  # random training patches (whole in-plane box, 32 slices) per masked study and epoch
    proximal_mu: float = 0.0  # FedProx term; 0 is plain FedAvg
    seed: int = field(default=0, metadata={PER_ROUND: False})  # run seed + server round, set at the site

    @classmethod
    def round_fields(cls) -> tuple[str, ...]:
        """Field names the coordinator sends with every training round."""
        return tuple(f.name for f in fields(cls) if f.metadata.get(PER_ROUND, True))

    @classmethod
    def round_keys(cls) -> tuple[str, ...]:
        """The same in Flower's kebab-case (``local-epochs``)."""
        return tuple(name.replace("_", "-") for name in cls.round_fields())


@dataclass(frozen=True)
class ArchSettings:
    """Architecture of :class:`fedaaa.common.model.AortaNet` (a MONAI 3D U-Net), stored in every model file.

    ``channels`` are the U-Net's stages (each after the first halves the grid), ``res_units`` its residual
    units per stage, ``patch_size`` the training patch and sliding-window size (voxels, divisible by the
    total down-sampling)."""

    # Five stages (down to 1/16 of the grid): at initialisation half of a voxel's evidence comes from within 21 voxels
    # (31 mm) instead of 11 with four, so the middle of a 60-80 mm sac of uniform thrombus still sees its outer wall.
    channels: tuple[int, ...] = (8, 16, 32, 64, 128)
    res_units: int = 0  # plain strided convolutions: 2-4x faster on a CPU than residual units, as accurate here
    dropout: float = 0.0
    negative_slope: float = 0.1  # LeakyReLU (not in place: Opacus hooks must see every activation)
    # The whole 128 x 128 in-plane box (PreprocessSettings.roi_size) by 32 slices: windows narrower than the box cut
    # a 60-80 mm sac in two at prediction and left its far half unsegmented; answering on the whole box with a
    # network trained on smaller patches shifted its InstanceNorm statistics and grew a halo round normal aortas.
    patch_size: tuple[int, int, int] = (128, 128, 32)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ArchSettings:
        """Parse and validate (:meth:`validate`); a ValueError with a one-sentence reason if not sane."""
        raw = _json_object(text, "architecture", tuple(f.name for f in fields(cls)))
        raw["channels"] = tuple(_check_list("architecture channels", raw["channels"], 2, MAX_STAGES))
        raw["patch_size"] = tuple(_check_list("architecture patch_size", raw["patch_size"], 3, 3))
        settings = cls(**raw)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Raise ValueError (one sentence) unless every value is of its type and in its sane range and the
        patch divides into the U-Net's down-sampling."""
        channels = _check_list("architecture channels", self.channels, 2, MAX_STAGES)
        for c in channels:
            _check_int("architecture channels", c, 1, MAX_STAGE_CHANNELS)
        _check_int("architecture res_units", self.res_units, 0, MAX_RES_UNITS)
        _check_float("architecture dropout", self.dropout, 0.0, 1.0, hi_open=True)
        _check_float("architecture negative_slope", self.negative_slope, 0.0, 1.0)
        patch = _check_list("architecture patch_size", self.patch_size, 3, 3)
        factor = 2 ** (len(channels) - 1)
        for v in patch:
            _check_int("architecture patch_size", v, *PATCH_RANGE)
            if v % factor:
                raise ValueError(f"architecture patch_size {_show(patch)} must be divisible by {factor}")

    def parameter_count(self) -> int:
        """An upper bound of the weights of :class:`~fedaaa.common.model.AortaNet` (valid settings only):
        per stage, the down and up convolutions and residual units with their norms and biases."""
        total, c_in = 0, 1
        for c in self.channels:
            per_conv = 27 * c * max(c_in, c) * 2 + 4 * c
            total += per_conv * (2 + 2 * self.res_units) * 2
            c_in = c
        return total
