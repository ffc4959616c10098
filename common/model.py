"""The AAA network (AAA logit + maximum aortic diameter), its loss, and the model file."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from monai.networks.blocks import Convolution
from torch import nn
from torch.nn import functional as F

from fedaaa.common.errors import ConfigError
from fedaaa.common.model_file import FORMAT_VERSION, ModelMeta, read_model_file, write_model_file
from fedaaa.common.settings import ArchSettings, PreprocessSettings

__all__ = [
    "FORMAT_VERSION",
    "DIAMETER_CENTER_MM",
    "DIAMETER_SCALE_MM",
    "AAANet",
    "ArchSettings",
    "ModelFile",
    "aaa_loss",
    "expected_shapes",
    "initial_state",
    "load_model",
    "save_model",
]

DIAMETER_CENTER_MM = 30.0  # the diameter head predicts (d - center) / scale: targets near unit range
DIAMETER_SCALE_MM = 15.0


class AAANet(nn.Module):
    """A small 3D CNN: conv/GroupNorm/ReLU stages with max pooling, avg+max global pooling, two heads.

    GroupNorm (no BatchNorm) and no in-place operations, so it trains under Opacus and its
    statistics do not diverge across hospitals.
    """

    def __init__(self, arch: ArchSettings = ArchSettings()) -> None:
        super().__init__()
        self.arch = arch
        layers: list[nn.Module] = []
        c_in = 1
        for i, c_out in enumerate(arch.channels):
            layers.append(
                Convolution(
                    spatial_dims=3,
                    in_channels=c_in,
                    out_channels=c_out,
                    kernel_size=3,
                    act=("leakyrelu", {"negative_slope": arch.negative_slope, "inplace": False}),
                    norm=("group", {"num_groups": min(arch.groups, c_out)}),
                )
            )
            if i < len(arch.channels) - 1:
                layers.append(nn.MaxPool3d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        self.trunk = nn.Sequential(
            nn.Linear(2 * c_in, arch.hidden), nn.LeakyReLU(arch.negative_slope), nn.Dropout(arch.dropout)
        )
        self.aaa_head = nn.Linear(arch.hidden, 1)
        self.diameter_head = nn.Linear(arch.hidden, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (AAA logit, maximum diameter in mm), each of shape (batch,)."""
        f = self.features(x)
        pooled = torch.cat([f.mean(dim=(2, 3, 4)), f.amax(dim=(2, 3, 4))], dim=1)
        h = self.trunk(pooled)
        logit = self.aaa_head(h).squeeze(1)
        diameter = DIAMETER_CENTER_MM + DIAMETER_SCALE_MM * self.diameter_head(h).squeeze(1)
        return logit, diameter


def aaa_loss(
    logit: torch.Tensor,
    diameter: torch.Tensor,
    aaa: torch.Tensor,
    diameter_true: torch.Tensor,
    diameter_weight: float = 1.0,
) -> torch.Tensor:
    """Binary cross-entropy on AAA plus a Huber loss on the diameter (in units of 15 mm).

    Rows without a reference diameter (NaN) contribute to the classification term only.
    """
    loss = F.binary_cross_entropy_with_logits(logit, aaa.float())
    known = torch.isfinite(diameter_true)
    if known.any():
        reg = F.smooth_l1_loss(diameter[known] / DIAMETER_SCALE_MM, diameter_true[known] / DIAMETER_SCALE_MM, beta=0.5)
        loss = loss + diameter_weight * reg
    return loss


def initial_state(arch: ArchSettings = ArchSettings()) -> dict[str, torch.Tensor]:
    """Freshly initialised weights (under the caller's torch seed)."""
    return AAANet(arch).state_dict()


@dataclass
class ModelFile:
    """A model and everything needed to use it the way it was trained."""

    model: AAANet
    preprocess: PreprocessSettings
    threshold: float = 0.5
    round: int = 0
    summary: dict[str, Any] | None = None

    @property
    def meta(self) -> ModelMeta:
        return ModelMeta(
            arch=self.model.arch,
            preprocess=self.preprocess,
            threshold=self.threshold,
            round=self.round,
            summary=self.summary or {},
        )


def save_model(path: str | Path, mf: ModelFile) -> Path:
    """Write weights as safetensors with the settings as metadata (loading executes no code)."""
    return write_model_file(path, mf.model.state_dict(), mf.meta)


def expected_shapes(arch: ArchSettings) -> dict[str, tuple[int, ...]]:
    """Names and shapes of the weights of ``AAANet(arch)``, built on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return {name: tuple(t.shape) for name, t in AAANet(arch).state_dict().items()}


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
            model = AAANet(meta.arch)
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
    )
