"""Typed settings shared by the hospitals and the coordinator (stdlib only: importing this is free)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields


@dataclass(frozen=True)
class PreprocessSettings:
    """Fixed physical spacing and field of view of the network input (RAS, mm and voxels)."""

    spacing_mm: tuple[float, float, float] = (2.5, 2.5, 5.0)
    roi_size: tuple[int, int, int] = (64, 64, 48)
    hu_window: tuple[float, float] = (-150.0, 450.0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> PreprocessSettings:
        raw = json.loads(text)
        return cls(**{k: tuple(v) for k, v in raw.items()})


# Field metadata: False for a TrainSettings field that each hospital derives itself instead of
# receiving it from the coordinator every round.
PER_ROUND = "per_round"


@dataclass(frozen=True)
class TrainSettings:
    """Local training at one hospital for one round; the defaults are the run defaults."""

    local_epochs: int = 3
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    diameter_weight: float = 1.0
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
    """Architecture of :class:`fedaaa.common.model.AAANet`, stored in every model file."""

    channels: tuple[int, ...] = (8, 16, 32, 64)
    groups: int = 4
    hidden: int = 64
    dropout: float = 0.0
    negative_slope: float = 0.1  # LeakyReLU: no dead units while the network searches for the aorta

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> ArchSettings:
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(text).items()})
