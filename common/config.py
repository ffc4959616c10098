"""One typed configuration per run, built in one place from Flower's run config or CLI flags."""

from __future__ import annotations

import math
from dataclasses import dataclass, fields, replace
from typing import Any

from fedaaa.common.errors import ConfigError
from fedaaa.common.settings import PreprocessSettings, TrainSettings

_TRAIN = TrainSettings()  # the per-round training defaults live there, once


@dataclass(frozen=True)
class RunSettings:
    """A federation run. Flower run-config keys are these names in kebab-case (``num-server-rounds``)."""

    num_server_rounds: int = 10
    local_epochs: int = _TRAIN.local_epochs
    batch_size: int = _TRAIN.batch_size
    learning_rate: float = _TRAIN.learning_rate
    # the learning rate falls along a half cosine from learning-rate in round 1 to this share of it in the
    # last round (1: constant, the default: 0.1 did not generalise better in the demo, docs/results.md);
    # hospitals receive each round's rate with the round
    final_lr_factor: float = 1.0
    weight_decay: float = _TRAIN.weight_decay
    patches_per_study: int = _TRAIN.patches_per_study
    proximal_mu: float = _TRAIN.proximal_mu
    fraction_train: float = 1.0
    fraction_evaluate: float = 1.0
    min_nodes: int = 2  # hospitals a round waits for and needs replies from
    strategy: str = "fedavg"  # fedavg, fedprox (needs proximal-mu), median, trimmed-mean, krum
    trim_beta: float = 0.2  # trimmed-mean: the fraction cut at each end
    round_timeout: float = 3600.0  # seconds a round waits for replies; it ends with those that arrived
    update_norm_ratio: float = 10.0  # an update whose change is this many times the others' median is rejected
    seed: int = _TRAIN.seed  # hospitals train round k with seed + k
    sites: str = ""  # simulation: comma-separated absolute site folders, one per virtual node
    output_dir: str = ""  # server: absolute folder for checkpoints, history and the final model
    # server: a model file (absolute path) whose weights start round 1 instead of random ones, e.g. one
    # pre-trained on public or synthetic data (no privacy cost); "" = random initial weights
    initial_model: str = ""
    cache_dir: str = ""  # client: preprocessed-input cache ("" = FEDAAA_CACHE_DIR or ~/.cache/fedaaa)
    device: str = "auto"
    # simulation only (a deployed hospital sets DP in its own node config and ignores these): every virtual
    # hospital's dp-epsilon ("8"), or one per site ("8,3,0"; 0 = no DP), and the clipping norm (0 = default)
    sim_dp_epsilon: str = ""
    sim_dp_max_grad_norm: float = 0.0
    sim_dp_rounds: int = 0  # the rounds each DP site spends its budget over (0: all); it refuses the rest

    @classmethod
    def from_run_config(cls, run_config: dict[str, Any]) -> RunSettings:
        known = {f.name: f for f in fields(cls)}
        values = {}
        for key, value in dict(run_config).items():
            name = key.replace("-", "_")
            if name not in known:
                raise ConfigError(f"unknown run-config key {key!r}")
            typ = type(getattr(cls(), name))
            try:
                values[name] = typ(value) if typ is not bool else str(value).lower() in ("1", "true")
            except (TypeError, ValueError):
                raise ConfigError(f"run-config {key} must be {typ.__name__}, got {value!r}") from None
        settings = cls(**values)
        settings.validate()
        return settings

    def to_run_config(self) -> dict[str, Any]:
        return {f.name.replace("_", "-"): getattr(self, f.name) for f in fields(self)}

    def validate(self) -> None:
        if self.num_server_rounds < 1:
            raise ConfigError("num-server-rounds must be at least 1")
        if self.local_epochs < 1 or self.batch_size < 1:
            raise ConfigError("local-epochs and batch-size must be at least 1")
        if not 0 < self.fraction_train <= 1 or not 0 <= self.fraction_evaluate <= 1:
            raise ConfigError("fraction-train must be in (0, 1] and fraction-evaluate in [0, 1]")
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"strategy must be one of {', '.join(STRATEGIES)}, not {self.strategy!r}")
        if self.strategy == "fedprox" and self.proximal_mu <= 0:
            raise ConfigError("strategy fedprox needs proximal-mu > 0")
        if not 0 <= self.trim_beta < 0.5 or self.round_timeout <= 0 or self.update_norm_ratio <= 1:
            raise ConfigError("trim-beta must be in [0, 0.5), round-timeout positive and update-norm-ratio above 1")
        if self.min_nodes < 1:
            raise ConfigError("min-nodes must be at least 1")
        if self.output_dir and not self.output_dir.startswith("/"):
            raise ConfigError(f"output-dir {self.output_dir!r}: give an absolute folder on the coordinator")
        if self.initial_model and not self.initial_model.startswith("/"):
            raise ConfigError(f"initial-model {self.initial_model!r}: give an absolute path on the coordinator")
        if self.learning_rate <= 0:
            raise ConfigError("learning-rate must be positive")
        if not 0 < self.final_lr_factor <= 1:
            raise ConfigError("final-lr-factor must be in (0, 1]")
        try:
            dp = [float(v) for v in self.sim_dp_epsilon.split(",") if v.strip()]
        except ValueError:
            raise ConfigError(
                f"sim-dp-epsilon must be numbers separated by commas, not {self.sim_dp_epsilon!r}"
            ) from None
        if any(not (0 <= e <= 100) for e in dp) or self.sim_dp_max_grad_norm < 0 or self.sim_dp_rounds < 0:
            raise ConfigError("sim-dp-epsilon must be in [0, 100], sim-dp-max-grad-norm and sim-dp-rounds at least 0")

    def site_list(self) -> list[str]:
        return [s.strip() for s in self.sites.split(",") if s.strip()]

    def round_learning_rate(self, server_round: int) -> float:
        """Round ``server_round``'s learning rate (1-based): ``learning_rate`` in round 1, falling along a half
        cosine to ``final_lr_factor`` of it in round ``num_server_rounds`` (and after it)."""
        if self.num_server_rounds < 2:
            return self.learning_rate
        t = min(max(server_round - 1, 0) / (self.num_server_rounds - 1), 1.0)
        return self.learning_rate * (
            self.final_lr_factor + (1 - self.final_lr_factor) * 0.5 * (1 + math.cos(math.pi * t))
        )

    def train_settings(self, server_round: int = 0) -> TrainSettings:
        per_round = {name: getattr(self, name) for name in TrainSettings.round_fields()}
        return TrainSettings(**per_round, seed=self.seed + server_round)

    def round_config(self) -> dict[str, Any]:
        """What the coordinator sends with every training round (Flower keys, kebab-case)."""
        run_config = self.to_run_config()
        return {key: run_config[key] for key in ROUND_KEYS}

    def with_overrides(self, **changes: Any) -> RunSettings:
        out = replace(self, **{k: v for k, v in changes.items() if v is not None})
        out.validate()
        return out


PREPROCESS = PreprocessSettings()

# The aggregation rules a coordinator can choose (Flower's strategies; see fedaaa.server.app.make_strategy).
STRATEGIES: tuple[str, ...] = ("fedavg", "fedprox", "median", "trimmed-mean", "krum")

# The per-round keys: every TrainSettings field a hospital does not derive itself.
ROUND_KEYS: tuple[str, ...] = TrainSettings.round_keys()

_missing = set(TrainSettings.round_fields()) - {f.name for f in fields(RunSettings)}
if _missing:  # a new TrainSettings field needs its run-config key
    raise TypeError(f"RunSettings lacks the per-round training fields {sorted(_missing)}")
