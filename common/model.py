"""The aorta segmentation network (a MONAI 3D U-Net), its loss, and the model file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.losses import DiceCELoss
from monai.networks.nets import UNet
from torch import nn

from fedaaa.common.calibration import Calibration
from fedaaa.common.errors import ConfigError
from fedaaa.common.model_file import FORMAT_VERSION, ModelMeta, read_model_file, write_model_file
from fedaaa.common.settings import ArchSettings, PreprocessSettings

__all__ = [
    "FORMAT_VERSION",
    "AortaNet",
    "ArchSettings",
    "ModelFile",
    "expected_shapes",
    "initial_state",
    "load_model",
    "save_model",
    "segmentation_loss",
]


class AortaNet(nn.Module):
    """A MONAI 3D U-Net that outputs one logit per voxel: aorta to its outer wall (lumen, thrombus, wall).

    InstanceNorm (no BatchNorm: no running statistics to diverge across hospitals, and Opacus computes
    per-sample gradients for it) and LeakyReLU that is not in place, so it trains under Opacus as it is.
    """

    def __init__(self, arch: ArchSettings = ArchSettings()) -> None:
        super().__init__()
        self.arch = arch
        self.unet = UNet(
            spatial_dims=3,
            in_channels=1,
            out_channels=1,
            channels=tuple(arch.channels),
            strides=(2,) * (len(arch.channels) - 1),
            num_res_units=arch.res_units,
            act=("leakyrelu", {"negative_slope": arch.negative_slope, "inplace": False}),
            norm=("instance", {"affine": True}),
            dropout=arch.dropout,
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Aorta logits, shape (batch, 1, X, Y, Z) like ``x``."""
        return self.unet(x)


def segmentation_loss(per_sample: bool = False) -> nn.Module:
    """Dice plus binary cross-entropy on the logits. Dice is computed over the whole batch, or, with
    ``per_sample``, per patch and averaged, so that each patch's loss depends on that patch only (DP-SGD's
    per-study gradients need a loss that separates by sample)."""
    return DiceCELoss(sigmoid=True, batch=not per_sample)


def initial_state(arch: ArchSettings = ArchSettings()) -> dict[str, torch.Tensor]:
    """Freshly initialised weights (under the caller's torch seed)."""
    return AortaNet(arch).state_dict()


@dataclass
class ModelFile:
    """A model and everything needed to use it the way it was trained."""

    model: AortaNet
    preprocess: PreprocessSettings
    threshold: float = 0.5
    round: int = 0
    summary: dict[str, Any] | None = None
    calibration: Calibration = Calibration()

    @property
    def meta(self) -> ModelMeta:
        return ModelMeta(
            arch=self.model.arch,
            preprocess=self.preprocess,
            threshold=self.threshold,
            round=self.round,
            summary=self.summary or {},
            calibration=self.calibration,
        )


def save_model(path: str | Path, mf: ModelFile) -> Path:
    """Write weights as safetensors with the settings as metadata (loading executes no code)."""
    return write_model_file(path, mf.model.state_dict(), mf.meta)


def expected_shapes(arch: ArchSettings) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the weights of ``AortaNet(arch)``, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return {name: tuple(t.shape) for name, t in AortaNet(arch).state_dict().items()}


def _check_weights(state: dict[str, torch.Tensor], arch: ArchSettings) -> None:
    """ValueError with one sentence unless ``state`` holds exactly the architecture's weights, all finite."""
    expected = expected_shapes(arch)
    missing = [k for k in expected if k not in state]
    unknown = [k for k in state if k not in expected]
    if missing or unknown:
        parts = ([f"lack {len(missing)} of the architecture's ({missing[0]}...)"] if missing else []) + (
            [f"hold {len(unknown)} it does not have ({json.dumps(unknown[0])[:60]}...)"] if unknown else []
        )
        raise ValueError(f"the weights do not match the architecture: they {' and '.join(parts)}")
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise ValueError(
                f"weight {name} has shape {list(state[name].shape)} where the architecture needs {list(shape)}"
            )
    for name, tensor in state.items():
        if not bool(torch.isfinite(tensor).all()):
            raise ValueError(f"the weights hold non-finite values (NaN or infinity, in {name})")


def load_model(path: str | Path) -> ModelFile:
    """Read a model file written by :func:`save_model`; a :class:`ConfigError` (``<file>: <reason>``) if
    it is not one, its settings are not sane, or its weights do not fit the architecture or are not finite.

    The network is built only after the metadata passed :func:`~fedaaa.common.model_file.validate_metadata`,
    and takes the file's tensors (as float32) instead of initialising its own.
    """
    state, meta = read_model_file(path)
    try:
        _check_weights(state, meta.arch)
    except ValueError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    try:
        with torch.device("meta"):
            model = AortaNet(meta.arch)
        model.load_state_dict({k: v.to(torch.float32).contiguous() for k, v in state.items()}, assign=True)
    except (RuntimeError, MemoryError) as exc:
        raise ConfigError(f"{path}: not a usable FedAAA model file ({type(exc).__name__})") from exc
    model.eval()
    return ModelFile(
        model=model,
        preprocess=meta.preprocess,
        threshold=meta.threshold,
        round=meta.round,
        summary=dict(meta.summary),
        calibration=meta.calibration,
    )


def starting_state(path: str | Path, arch: ArchSettings = ArchSettings()) -> dict[str, torch.Tensor]:
    """The weights a run starts from when ``initial-model`` names a model file (pre-trained elsewhere):
    a :class:`ConfigError` naming the file unless it is a valid model of this architecture and input."""
    from fedaaa.common.config import PREPROCESS

    mf = load_model(path)
    if mf.model.arch != arch:
        raise ConfigError(f"{path}: its network ({mf.model.arch}) is not the one this run trains ({arch})")
    if mf.preprocess != PREPROCESS:
        raise ConfigError(f"{path}: it was trained on another input (preprocessing {mf.preprocess})")
    return {k: v.detach().clone() for k, v in mf.model.state_dict().items()}
