"""Differential privacy at one hospital: DP-SGD with Opacus under a budget the hospital sets itself.

- **Opt-in per site.** A hospital turns DP on in its own node config (``dp-epsilon``, optional ``dp-delta``
  and ``dp-max-grad-norm``); the coordinator cannot turn it on, off or change it.
- **The record is a training study.** Each step samples every labelled study with probability ``q``
  (Poisson sampling) and draws one random augmented patch from each study sampled, so one study is one
  clipped per-sample gradient: the guarantee is record-level DP for this site's training studies.
- **The noise is planned for the whole run**: the noise multiplier is chosen once, in the site's first
  training round, so that all the run's planned rounds x local epochs x steps stay within the target.
- **The ledger survives restarts.** The accountant's history (noise multiplier, sample rate, steps) is kept
  in the site's state folder (``state-dir``; a deployed ClientApp starts a fresh process for every message)
  and in ``context.state``; the reported epsilon is the total spent in the run so far.
- **Enforced.** A round whose steps would take the total past the target is refused: the site trains
  nothing, says so in its log and reply, and can still evaluate.
- **Not reproducible by design.** The sampling and the noise come from generators seeded by the operating
  system, never by the run's seed, which the coordinator knows.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedaaa.common.errors import ConfigError
from fedaaa.common.metrics import TrainStats
from fedaaa.common.model import AortaNet, segmentation_loss
from fedaaa.common.settings import TrainSettings
from fedaaa.common.site import StudySet

log = logging.getLogger("fedaaa.privacy")

ACCOUNTANT = "rdp"  # Opacus' Renyi-DP accountant: the noise is planned and the spending counted with it
LEDGER_FILE = "privacy-ledger.json"
STATE_KEY = "fedaaa-privacy"  # the ConfigRecord in context.state
MAX_EPSILON = 100.0
DELTA_PER_STUDY = 0.1  # default delta: 0.1 / training studies, an order of magnitude below 1/N
# Per-study gradient norms of the Dice + cross-entropy loss measured 0.35-0.8 (from the first round to after
# ten epochs, on synthetic hospitals): a clip of 0.5 bounds each study without discarding most of its signal.
DEFAULT_CLIP = 0.5


@dataclass(frozen=True)
class PrivacySettings:
    """What a hospital chose: the target epsilon for the whole run, delta (None: 0.1 / training studies)
    and the per-sample clipping norm."""

    epsilon: float
    delta: float | None = None
    max_grad_norm: float = DEFAULT_CLIP
    rounds: int | None = None  # rounds to spend the budget over (None: all the run's rounds); later ones refused

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> PrivacySettings | None:
        """``dp-epsilon`` (absent or 0: no DP), ``dp-delta``, ``dp-max-grad-norm``, ``dp-rounds``; ConfigError
        if not sane."""
        raw = node_config.get("dp-epsilon")
        if raw is None or str(raw).strip() in ("", "0", "0.0", "off", "none"):
            others = sorted(k for k in ("dp-delta", "dp-max-grad-norm", "dp-rounds") if k in node_config)
            if others:
                raise ConfigError(f"node config sets {', '.join(others)} but not dp-epsilon")
            return None
        epsilon = _number("dp-epsilon", raw, 0.0, MAX_EPSILON)
        delta = node_config.get("dp-delta")
        clip = node_config.get("dp-max-grad-norm", DEFAULT_CLIP)
        rounds = node_config.get("dp-rounds")
        if rounds is not None:
            value = _number("dp-rounds", rounds, 0.0, 10_000)
            if value != int(value):
                raise ConfigError(f"node config dp-rounds must be a whole number, not {value:g}")
            rounds = int(value)
        return cls(
            epsilon=epsilon,
            delta=None if delta is None else _number("dp-delta", delta, 0.0, 1.0),
            max_grad_norm=_number("dp-max-grad-norm", clip, 0.0, 1e3),
            rounds=rounds,
        )

    def delta_for(self, n_studies: int) -> float:
        """Delta for a site of ``n_studies`` training studies; ConfigError if a chosen delta is not below 1/N
        (that would allow one study's data to be released whole)."""
        if self.delta is None:
            return DELTA_PER_STUDY / max(n_studies, 1)
        if self.delta >= 1.0 / max(n_studies, 1):
            raise ConfigError(
                f"dp-delta {self.delta:g} must be below 1/(training studies) = {1.0 / max(n_studies, 1):.3g}"
            )
        return self.delta


def _number(name: str, value: object, lo: float, hi: float) -> float:
    try:
        x = float(value)  # node config values arrive as strings or numbers
    except (TypeError, ValueError):
        raise ConfigError(f"node config {name} must be a number, not {str(value)[:40]!r}") from None
    if not (math.isfinite(x) and lo < x <= hi):
        raise ConfigError(f"node config {name} must be a number in ({lo:g}, {hi:g}], not {x:g}")
    return x


Step = tuple[float, float, int]  # (noise multiplier, sample rate, steps): one entry of Opacus' history


@dataclass
class PrivacyLedger:
    """One run's privacy spending at one site."""

    run: str
    target_epsilon: float
    delta: float
    max_grad_norm: float
    noise_multiplier: float
    planned_rounds: int
    history: list[Step] = field(default_factory=list)
    rounds_trained: list[int] = field(default_factory=list)
    rounds_refused: list[int] = field(default_factory=list)

    def epsilon(self, extra: Step | None = None) -> float:
        """The epsilon spent (at this ledger's delta) after all steps taken, plus ``extra`` if given."""
        history = list(self.history) + ([extra] if extra else [])
        return epsilon_of(history, self.delta)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> PrivacyLedger:
        d = dict(raw)
        d["history"] = [(float(s), float(q), int(n)) for s, q, n in d.get("history", [])]
        return cls(**d)


def epsilon_of(history: list[Step], delta: float) -> float:
    """Opacus' accountant's epsilon for ``history`` (0 before any step)."""
    if not history:
        return 0.0
    from opacus.accountants import RDPAccountant

    accountant = RDPAccountant()
    accountant.history = list(history)
    return float(accountant.get_epsilon(delta))


def plan_noise(epsilon: float, delta: float, sample_rate: float, steps: int) -> float:
    """The noise multiplier that keeps ``steps`` steps at ``sample_rate`` within (epsilon, delta)."""
    from opacus.accountants.utils import get_noise_multiplier

    return float(
        get_noise_multiplier(
            target_epsilon=epsilon,
            target_delta=delta,
            sample_rate=sample_rate,
            steps=steps,
            accountant=ACCOUNTANT,
            epsilon_tolerance=0.01,
        )
    )


class LedgerStore:
    """A site's ledgers, one per run: a JSON file in its state folder (authoritative: it survives a restart
    of the node) and a copy in ``context.state`` (all a simulated node has)."""

    def __init__(self, state_dir: Path | None, state: Any = None) -> None:
        self.path = Path(state_dir) / LEDGER_FILE if state_dir else None
        self.state = state  # a Flower RecordDict (context.state) or None

    def _runs(self) -> dict[str, Any]:
        if self.path is not None and self.path.is_file():
            try:
                doc = json.loads(self.path.read_text())
            except ValueError:
                raise ConfigError(f"{self.path}: the privacy ledger is not valid JSON; refusing to train") from None
            return dict(doc.get("runs", {}))
        if self.state is not None and STATE_KEY in self.state.config_records:
            return json.loads(str(self.state.config_records[STATE_KEY]["runs"]))
        return {}

    def load(self, run: str) -> PrivacyLedger | None:
        raw = self._runs().get(run)
        try:
            return PrivacyLedger.from_dict(raw) if raw else None
        except (TypeError, ValueError, KeyError):
            raise ConfigError(
                f"{self.path or 'context.state'}: the privacy ledger is damaged; refusing to train"
            ) from None

    def save(self, ledger: PrivacyLedger) -> None:
        runs = self._runs() | {ledger.run: ledger.to_dict()}
        text = json.dumps({"version": 1, "runs": runs}, indent=1)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            tmp.replace(self.path)
        if self.state is not None:
            from flwr.app import ConfigRecord

            self.state.config_records[STATE_KEY] = ConfigRecord({"runs": json.dumps(runs)})


class _StudyPatches(torch.utils.data.Dataset):
    """Item i: one random augmented patch (image, label) of the i-th labelled study."""

    def __init__(self, data: StudySet, patch_size: tuple[int, ...], seed: int) -> None:
        from fedaaa.common.training import training_transform

        self.data, self.index = data, data.masked
        self.transform = training_transform(patch_size, samples=1)
        self.transform.set_random_state(seed=seed)

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        k = self.index[i]
        (sample,) = self.transform({"image": self.data.images[k], "label": self.data.labels[k]})
        return torch.as_tensor(sample["image"]).float(), torch.as_tensor(sample["label"]).float()


def _os_generator(device: torch.device) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(secrets.randbits(63))


def _poisson_loader(dataset: _StudyPatches, batch_size: int) -> torch.utils.data.DataLoader:
    """Poisson sampling at rate 1 / ceil(N / batch size): ceil(N / batch size) steps per epoch, expected batch
    ``batch_size``; the sampler's generator is seeded by the operating system."""
    from opacus.data_loader import DPDataLoader

    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size)
    return DPDataLoader.from_data_loader(loader, generator=_os_generator(torch.device("cpu")))


def steps_per_round(n_studies: int, settings: TrainSettings) -> tuple[float, int]:
    """(sample rate, steps) of one round of ``settings.local_epochs`` epochs over ``n_studies`` studies."""
    per_epoch = max(1, math.ceil(n_studies / settings.batch_size))
    return 1.0 / per_epoch, per_epoch * settings.local_epochs


@dataclass
class PrivateRound:
    """What a DP site did in one round: trained (with what it spent) or refused, and why."""

    trained: bool
    epsilon: float  # cumulative, after this round
    target_epsilon: float
    reason: str = ""


def train_private(
    model: AortaNet,
    data: StudySet,
    settings: TrainSettings,
    device: torch.device,
    privacy: PrivacySettings,
    store: LedgerStore,
    run: str,
    server_round: int,
    planned_rounds: int,
) -> tuple[TrainStats, PrivateRound]:
    """One round of DP-SGD in place on ``model`` (its own weights and names: Opacus' wrapper is removed),
    or a refusal when the round would exceed the budget. The ledger is saved after every round trained."""
    n = len(data.masked)
    if not n:
        ledger = store.load(run)
        spent = ledger.epsilon() if ledger else 0.0
        return {"train-loss": 0.0, "num-examples": 0}, PrivateRound(False, spent, privacy.epsilon, "no labelled study")
    q, steps = steps_per_round(n, settings)
    ledger = store.load(run)
    if ledger is None:
        delta = privacy.delta_for(n)
        planned_rounds = min(planned_rounds, privacy.rounds or planned_rounds)
        sigma = plan_noise(privacy.epsilon, delta, q, steps * planned_rounds)
        ledger = PrivacyLedger(run, privacy.epsilon, delta, privacy.max_grad_norm, sigma, planned_rounds)
        log.info(
            "DP: target epsilon %.2f at delta %.2g over %d rounds of %d steps (sample rate %.3f): noise multiplier %.3f",
            privacy.epsilon,
            delta,
            planned_rounds,
            steps,
            q,
            sigma,
        )
    after = ledger.epsilon((ledger.noise_multiplier, q, steps))
    if server_round in ledger.rounds_trained:  # a repeated message: never spend twice for one round
        return {"train-loss": 0.0, "num-examples": 0}, PrivateRound(
            False, ledger.epsilon(), ledger.target_epsilon, f"round {server_round} already trained"
        )
    if after > ledger.target_epsilon * (1 + 1e-9):
        ledger.rounds_refused.append(server_round)
        store.save(ledger)
        reason = (
            f"this round would take epsilon from {ledger.epsilon():.3f} to {after:.3f}, "
            f"past this site's budget of {ledger.target_epsilon:g}"
        )
        return {"train-loss": 0.0, "num-examples": 0}, PrivateRound(
            False, ledger.epsilon(), ledger.target_epsilon, reason
        )
    loss = _dp_sgd(model, data, settings, device, ledger, q)
    ledger.rounds_trained.append(server_round)
    store.save(ledger)
    return {"train-loss": loss, "num-examples": n}, PrivateRound(True, ledger.epsilon(), ledger.target_epsilon)


def _dp_sgd(
    model: AortaNet, data: StudySet, settings: TrainSettings, device: torch.device, ledger: PrivacyLedger, q: float
) -> float:
    """``settings.local_epochs`` epochs of DP-SGD; appends the steps to ``ledger.history``.

    Opacus does the private part: its ``DPOptimizer`` clips every study's gradient to the ledger's norm,
    adds Gaussian noise to the sum and scales by the expected batch size before AdamW steps, and its RDP
    accountant records every step. The per-study gradients are computed one study at a time (a backward
    pass per sampled patch) rather than by Opacus' per-sample hooks: the network has no coupling between
    the samples of a batch (InstanceNorm, a per-sample loss), so the two are the same gradients, and for
    3-D convolutions on a CPU one pass per patch costs little more than the plain batch, where the hooks'
    unfolded activations cost about three times as much (``bench/dp_bench.py``)."""
    import warnings

    from opacus.accountants import RDPAccountant
    from opacus.optimizers import DPOptimizer

    torch.seed()  # the augmentation draws, like the sampling and noise, owe nothing to the run's seed
    rng = np.random.default_rng(secrets.randbits(63))
    dataset = _StudyPatches(data, tuple(model.arch.patch_size), seed=int(rng.integers(2**31)))
    loader = _poisson_loader(dataset, settings.batch_size)
    if abs(1.0 / len(loader) - q) > 1e-12:  # the plan and the loader must agree on the sample rate
        raise RuntimeError(f"sample rate {1.0 / len(loader)} differs from the planned {q}")
    model.to(device).train()
    global_params = [p.detach().clone() for p in model.parameters()] if settings.proximal_mu > 0 else None
    accountant = RDPAccountant()
    accountant.history = list(ledger.history)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = DPOptimizer(
        torch.optim.AdamW(params, lr=settings.learning_rate, weight_decay=settings.weight_decay),
        noise_multiplier=ledger.noise_multiplier,
        max_grad_norm=ledger.max_grad_norm,
        expected_batch_size=max(1, round(len(dataset) * q)),
        loss_reduction="mean",
        generator=_os_generator(device),
    )
    optimizer.attach_step_hook(accountant.get_optimizer_hook_fn(sample_rate=q))
    loss_fn = segmentation_loss(per_sample=True)
    total, seen = 0.0, 0
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Secure RNG", category=UserWarning)  # see docs/privacy.md
        for _ in range(settings.local_epochs):
            for x, y in _device_batches(loader, device):
                per_study = [torch.empty((len(x), *p.shape), device=device) for p in params]
                for i in range(len(x)):  # each sampled study's own gradient (none sampled: noise only)
                    model.zero_grad(set_to_none=True)
                    loss = loss_fn(model(x[i : i + 1]), y[i : i + 1])
                    loss.backward()
                    for g, p in zip(per_study, params):
                        g[i] = p.grad
                    total += float(loss.detach())
                seen += len(x)
                for g, p in zip(per_study, params):
                    p.grad_sample = g
                optimizer.step()  # clip each study, sum, add noise, scale, AdamW; the accountant counts it
                optimizer.zero_grad(set_to_none=True)
                if global_params is not None:  # FedProx's pull to the global model, applied after the private
                    with torch.no_grad():  # step (it uses no data, so it costs no privacy)
                        for p, g in zip(model.parameters(), global_params):
                            p.sub_(settings.learning_rate * settings.proximal_mu * (p - g))
    for p in params:
        p.grad_sample = None
        p.grad = None
    ledger.history = [(float(s), float(r), int(k)) for s, r, k in accountant.history]
    return total / max(seen, 1)


def _device_batches(loader: torch.utils.data.DataLoader, device: torch.device) -> Iterator[tuple[torch.Tensor, ...]]:
    for x, y in loader:
        yield x.to(device), y.to(device)


def check_network(model: torch.nn.Module) -> None:
    """Opacus' own validator: raise ConfigError naming the problems unless the network trains under DP as it
    is (no layer is swapped at a site: the federation averages one architecture)."""
    from opacus.validators import ModuleValidator

    errors = ModuleValidator.validate(model, strict=False)
    if errors:
        raise ConfigError(f"the network cannot train under Opacus: {'; '.join(str(e) for e in errors)[:300]}")
