"""The AAA network (AAA logit + maximum aortic diameter), its loss, and the model file."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from monai.networks.blocks import Convolution
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn import functional as F

from fedaaa.common.errors import ConfigError
from fedaaa.common.preprocess import PreprocessSettings

DIAMETER_CENTER_MM = 30.0  # the diameter head predicts (d - center) / scale: targets near unit range
DIAMETER_SCALE_MM = 15.0
FORMAT_VERSION = "1"


@dataclass(frozen=True)
class ArchSettings:
    channels: tuple[int, ...] = (8, 16, 32, 64)
    groups: int = 4
    hidden: int = 64
    dropout: float = 0.0
    negative_slope: float = 0.1  # LeakyReLU: no dead units while the network searches for the aorta


class AAANet(nn.Module):
    """A small 3D CNN: conv/GroupNorm/ReLU stages with max pooling, avg+max global pooling, two heads.

    GroupNorm (no BatchNorm) and no in-place operations, so it trains under Opacus and its
    statistics do not diverge across hospitals.
    """

    def __init__(self, arch: ArchSettings = ArchSettings()):
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


@dataclass
class ModelFile:
    """A model and everything needed to use it the way it was trained."""

    model: AAANet
    preprocess: PreprocessSettings
    threshold: float = 0.5
    round: int = 0
    summary: dict | None = None


def save_model(path: str | Path, mf: ModelFile) -> Path:
    """Write weights as safetensors with the settings as metadata (loading executes no code)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in mf.model.state_dict().items()}
    metadata = {
        "format": "fedaaa-model",
        "format_version": FORMAT_VERSION,
        "architecture": json.dumps(asdict(mf.model.arch)),
        "preprocess": mf.preprocess.to_json(),
        "threshold": repr(float(mf.threshold)),
        "round": str(int(mf.round)),
        "summary": json.dumps(mf.summary or {}),
    }
    tmp = path.with_name(path.name + ".tmp")
    save_file(state, str(tmp), metadata=metadata)
    tmp.replace(path)
    return path


def load_model(path: str | Path) -> ModelFile:
    """Read a model file written by :func:`save_model`; a :class:`ConfigError` if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: model file does not exist")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        if meta.get("format") != "fedaaa-model":
            raise ConfigError(f"{path}: not a FedAAA model file (no fedaaa metadata)")
        arch = ArchSettings(
            **{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(meta["architecture"]).items()}
        )
        model = AAANet(arch)
        model.load_state_dict(load_file(str(path)))
    except ConfigError:
        raise
    except (SafetensorError, OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable FedAAA model file ({type(exc).__name__})") from exc
    model.eval()
    return ModelFile(
        model=model,
        preprocess=PreprocessSettings.from_json(meta["preprocess"]),
        threshold=float(meta.get("threshold", 0.5)),
        round=int(meta.get("round", 0)),
        summary=json.loads(meta.get("summary", "{}")),
    )
