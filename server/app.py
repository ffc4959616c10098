"""Flower ServerApp: FedAvg rounds over the hospitals, a checkpoint and a history line per round.

Importing this module is light (no MONAI, pydicom, scipy or nibabel): checkpoints are written from the
aggregated state dict, and the network is built once, inside :func:`main`, for the initial weights.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any, Literal, TypedDict

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedMedian, FedProx, FedTrimmedAvg, Krum

from fedaaa.common.calibration import TARGET_SENSITIVITY, Calibration, calibrate
from fedaaa.common.clinical import AAA_THRESHOLD_MM
from fedaaa.common.config import PREPROCESS, ROUND_KEYS, RunSettings
from fedaaa.common.errors import ConfigError
from fedaaa.common.metrics import sum_stats, summarize
from fedaaa.common.model_file import ModelMeta, read_model_file, write_model_file
from fedaaa.common.settings import ArchSettings

log = logging.getLogger("flwr.fedaaa.server")
app = ServerApp()

__all__ = [
    "ROUND_KEYS",
    "FederationRecorder",
    "app",
    "evaluate_figures",
    "json_safe",
    "main",
    "make_strategy",
    "train_figures",
    "update_problem",
]

# The record name a hospital's reply carries its statistics under (see fedaaa.client.app._reply).
METRICS_RECORD = "metrics"
RUN_KEY = "run-key"  # the round config's run identity that survives a coordinator restart (see resume)
ARRAYS_RECORD = "arrays"

Stage = Literal["train", "evaluate"]
Figures = dict[str, float | int]


class TrainFigures(TypedDict):
    """One round's training, aggregated across the hospitals that answered."""

    train_loss: float
    train_examples: int
    train_sites: int
    skipped_studies: int


def train_figures(records: list[RecordDict], weight_key: str = "num-examples") -> TrainFigures:
    """Example-weighted mean loss, examples, sites and skipped studies of the hospitals' train replies."""
    metrics = [_metrics_of(r) for r in records]
    n = sum(int(m[weight_key]) for m in metrics)
    return {
        "train_loss": sum(float(m["train-loss"]) * int(m[weight_key]) for m in metrics) / max(n, 1),
        "train_examples": n,
        "train_sites": len(metrics),
        "skipped_studies": sum(int(m.get("skipped-studies", 0)) for m in metrics),
    }


def evaluate_figures(records: list[RecordDict]) -> Figures:
    """Validation metrics (``val_*``) of the summed statistics, and how many hospitals sent them."""
    stats = sum_stats(dict(_metrics_of(r)) for r in records)
    return {f"val_{k}": v for k, v in summarize(stats).items()} | {"val_sites": len(records)}


def _metrics_of(record: RecordDict) -> MetricRecord:
    return record.metric_records[METRICS_RECORD]


def _finite(d: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if not (isinstance(v, float) and math.isnan(v))}


def json_safe(value: Any) -> Any:
    """JSON has no NaN: non-finite floats become null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


# An update whose change of the model is larger than the model itself is never a round of local training.
MAX_RELATIVE_CHANGE = 1.0


def update_problem(update: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> str | None:
    """Why a hospital's returned weights cannot be averaged into ``reference`` (the round's global model):
    other names, shapes or dtypes, or a non-finite value. ``None`` when they can."""
    missing, extra = sorted(set(reference) - set(update)), sorted(set(update) - set(reference))
    if missing or extra:
        return f"weight names differ from the global model's (missing {missing[:3]}, unexpected {extra[:3]})"
    for name, ref in reference.items():
        got = update[name]
        if tuple(got.shape) != tuple(ref.shape):
            return f"{name} has shape {tuple(got.shape)}, not {tuple(ref.shape)}"
        if got.dtype != ref.dtype:
            return f"{name} has dtype {got.dtype}, not {ref.dtype}"
        if got.is_floating_point() and not bool(torch.isfinite(got).all()):
            return f"{name} holds NaN or infinite values"
    return None


def change_norm(update: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> float:
    """The L2 norm of ``update - reference`` over all floating-point weights."""
    total = 0.0
    for name, ref in reference.items():
        if ref.is_floating_point():
            total += float(((update[name].double() - ref.double()) ** 2).sum())
    return math.sqrt(total)


def model_norm(state: Mapping[str, torch.Tensor]) -> float:
    return math.sqrt(sum(float((t.double() ** 2).sum()) for t in state.values() if t.is_floating_point()))


@dataclass
class _Round:
    train: Figures = field(default_factory=dict)
    evaluate: Figures = field(default_factory=dict)
    sites: list[dict[str, Any]] = field(default_factory=list)  # per hospital (opaque index): examples, DP
    elapsed_s: float | None = None  # set when the round has ended (its checkpoint is written)

    @property
    def ended(self) -> bool:
        return self.elapsed_s is not None


class FederationRecorder:
    """One checkpoint and one history entry per round, each round's figures kept under its number.

    The strategy hands over a round's train and evaluate figures and Flower's ``evaluate_fn`` ends the
    round with its weights, in whatever order: an entry only ever holds the figures of its own round,
    and a figure that arrives after its round ended rewrites that round's history entry and checkpoint.
    """

    def __init__(self, output_dir: Path, settings: RunSettings, arch: ArchSettings = ArchSettings()) -> None:
        self.output_dir = output_dir
        self.settings = settings
        self.arch = arch
        self._rounds: dict[int, _Round] = {}
        self._histograms: dict[int, tuple[list[float], list[float]]] = {}  # round -> summed val histograms
        self._node_index: dict[int, int] = {}  # Flower node id -> opaque site index (order of first reply)
        self.run_key = uuid.uuid4().hex  # sent with every round; a resumed run keeps it (DP ledgers file by it)
        self._t0 = time.time()
        (output_dir / "checkpoints").mkdir(parents=True, exist_ok=True)

    # Settings that may change when a run is resumed: the length of the run and how long a round waits.
    RESUMABLE_CHANGES = frozenset({"num-server-rounds", "round-timeout", "min-nodes"})

    def resume(self) -> tuple[int, dict[str, torch.Tensor] | None]:
        """Pick up a run this output folder already holds: the last round whose checkpoint was written, and
        its weights (``(0, None)`` for a fresh folder). The history, per-site indexes and validation
        histograms are restored, so the learning curve goes on where it stopped. A folder holding a
        different run (other settings) is refused."""
        path = self.output_dir / "history.json"
        if not path.is_file():
            return 0, None
        try:
            doc = json.loads(path.read_text())
            rounds = doc["rounds"]
            saved = doc["settings"]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise ConfigError(f"{path}: cannot resume from it ({err}); choose another output-dir") from None
        mine = self._shared_settings()
        differ = sorted(
            k for k in set(mine) | set(saved) if k not in self.RESUMABLE_CHANGES and mine.get(k) != saved.get(k)
        )
        if differ:
            raise ConfigError(
                f"{self.output_dir} holds another run ({', '.join(differ[:4])} differ); choose another output-dir"
            )
        ended = [e for e in rounds if isinstance(e, dict) and self.checkpoint_path(int(e["round"])).is_file()]
        if not ended:
            return 0, None
        for e in ended:
            k = int(e["round"])
            r = self._rounds.setdefault(k, _Round())
            figures = {n: v for n, v in e.items() if n not in ("round", "elapsed_s", "sites")}
            r.train = {n: v for n, v in figures.items() if not n.startswith("val_")}
            r.evaluate = {n: v for n, v in figures.items() if n.startswith("val_")}
            r.sites = list(e.get("sites", []))
            r.elapsed_s = float(e["elapsed_s"]) if e.get("elapsed_s") is not None else 0.0
        last = max(self._rounds)
        self._t0 = time.time() - (self._rounds[last].elapsed_s or 0.0)
        state = self._read_state()
        self._node_index = {int(k): int(v) for k, v in state.get("node_index", {}).items()}
        self.run_key = str(state.get("run_key") or self.run_key)
        self._histograms = {int(k): (list(v[0]), list(v[1])) for k, v in state.get("histograms", {}).items()}
        weights, _ = read_model_file(self.checkpoint_path(last))
        log.info("resuming %s after round %d (%d rounds in its history)", self.output_dir, last, len(ended) - 1)
        return last, weights

    def _state_path(self) -> Path:
        return self.output_dir / "resume-state.json"

    def _read_state(self) -> dict[str, Any]:
        try:
            return json.loads(self._state_path().read_text())
        except (OSError, ValueError):
            return {}

    def _write_state(self) -> None:
        """What a resumed run needs besides the history: node -> site index, validation histograms (the final
        calibration is fitted on the last round's)."""
        doc = {"run_key": self.run_key, "node_index": self._node_index, "histograms": self._histograms}
        tmp = self._state_path().with_suffix(".tmp")
        tmp.write_text(json.dumps(doc))
        tmp.replace(self._state_path())

    @property
    def history(self) -> list[dict[str, Any]]:
        """The entries of the rounds that ended, in round order."""
        return [self._entry(k) for k in sorted(self._rounds) if self._rounds[k].ended]

    @property
    def trained_rounds(self) -> int:
        return sum(1 for k, r in self._rounds.items() if k > 0 and r.train.get("train_examples", 0) > 0)

    def checkpoint_path(self, server_round: int) -> Path:
        return self.output_dir / "checkpoints" / f"round-{server_round:03d}.safetensors"

    def site_index(self, node_id: int) -> int:
        """An opaque index for a deployed hospital (0, 1, ... in the order its first reply arrived)."""
        if node_id not in self._node_index:
            self._node_index[node_id] = len(self._node_index)
            self._write_state()
        return self._node_index[node_id]

    def site_entries(self, replies: Iterable[Message]) -> list[dict[str, Any]]:
        """Per hospital that answered a training round, by opaque index (a simulated hospital's partition,
        a deployed one's order of arrival; never a path or name): studies trained on and, for a site under
        DP, the epsilon it has spent in this run so far, its target and whether it refused the round."""
        entries = []
        for msg in replies:
            if msg.has_error():
                continue
            m = msg.content[METRICS_RECORD]
            index = int(m["site-index"]) if "site-index" in m else self.site_index(msg.metadata.src_node_id)
            entry: dict[str, Any] = {"site": index, "examples": int(m.get("num-examples", 0))}
            if float(m.get("dp-target-epsilon", 0.0)) > 0:  # a site under DP
                entry |= {
                    "dp_epsilon": float(m["dp-epsilon"]),
                    "dp_target_epsilon": float(m.get("dp-target-epsilon", math.nan)),
                    "dp_refused": bool(int(m.get("dp-refused", 0))),
                }
            entries.append(entry)
        return sorted(entries, key=lambda e: e["site"])

    def record(
        self,
        server_round: int,
        stage: Stage,
        figures: Mapping[str, float | int],
        sites: list[dict[str, Any]] | None = None,
    ) -> None:
        """Keep one stage's aggregated figures of ``server_round`` (and, for training, the per-site entries)."""
        r = self._rounds.setdefault(server_round, _Round())
        setattr(r, stage, dict(figures))
        if sites is not None:
            r.sites = list(sites)
        if r.ended:  # the round already has its checkpoint: bring it and the history up to date
            state, _ = read_model_file(self.checkpoint_path(server_round))
            self._write_checkpoint(server_round, state)
            self._write_history()

    def keep_histograms(self, server_round: int, hist_pos: list[float], hist_neg: list[float]) -> None:
        """The round's summed validation histograms of measured diameters (AAA, not AAA): the final model's
        probability is calibrated, and its threshold chosen, on the last round's."""
        self._histograms[server_round] = (list(hist_pos), list(hist_neg))
        self._write_state()

    def calibration(self) -> tuple[Calibration, float]:
        """Platt scaling and the threshold for :data:`TARGET_SENSITIVITY`, from the last round's validation
        histograms (the default calibration at 30 mm when there are none)."""
        if not self._histograms:
            cal = Calibration()
            return cal, float(cal.probability(AAA_THRESHOLD_MM))
        return calibrate(*self._histograms[max(self._histograms)])

    def end_of_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's ``evaluate_fn``: called before round 1 (round 0) and after every round."""
        r = self._rounds.setdefault(server_round, _Round())
        r.elapsed_s = round(time.time() - self._t0, 1)
        self._write_checkpoint(server_round, arrays.to_torch_state_dict())
        self._write_history()
        self._write_state()
        if server_round > 0:
            entry = self._entry(server_round)
            log.info(
                "round %d: train loss %.4f | val AUROC %.3f, diameter MAE %.2f mm (%d studies)",
                server_round,
                entry.get("train_loss", math.nan),
                entry.get("val_auroc", math.nan),
                entry.get("val_diameter_mae_mm", math.nan),
                entry.get("val_n", 0),
            )
        return None

    def finish(self, arrays: ArrayRecord, rounds: int) -> Path:
        """Write the final global model, with the last round's entry as its summary."""
        if not self.trained_rounds:
            raise RuntimeError("no hospital returned a model update in any round; see the node logs")
        history = self.history
        summary = {k: v for k, v in history[-1].items() if k != "sites"} if history else {}
        cal, threshold = self.calibration()
        summary |= {
            "threshold_diameter_mm": round(cal.diameter_at(threshold), 2),
            "target_sensitivity": TARGET_SENSITIVITY,
        }
        meta = ModelMeta(
            arch=self.arch, preprocess=PREPROCESS, round=rounds, summary=summary, calibration=cal, threshold=threshold
        )
        log.info(
            "calibrated on %d validation studies: P(AAA) = sigmoid(%.3f/mm x (d - %.1f mm)); threshold %.3f (%.1f mm)",
            cal.fitted_on,
            cal.slope_per_mm,
            cal.center_mm,
            threshold,
            cal.diameter_at(threshold),
        )
        return write_model_file(self.output_dir / "global_model.safetensors", arrays.to_torch_state_dict(), meta)

    def _entry(self, server_round: int) -> dict[str, Any]:
        r = self._rounds[server_round]
        entry: dict[str, Any] = {"round": server_round, "elapsed_s": r.elapsed_s}
        if server_round > 0:
            entry |= r.train | r.evaluate
            if r.sites:
                entry["sites"] = r.sites
        return entry

    def _write_checkpoint(self, server_round: int, state: Mapping[str, torch.Tensor]) -> None:
        summary = {k: v for k, v in self._entry(server_round).items() if k not in ("elapsed_s", "sites")}
        meta = ModelMeta(arch=self.arch, preprocess=PREPROCESS, round=server_round, summary=summary)
        write_model_file(self.checkpoint_path(server_round), state, meta)

    def _shared_settings(self) -> dict[str, Any]:
        settings = self.settings.to_run_config()
        for k in ("sites", "output-dir", "cache-dir"):  # local paths stay out of the shared record
            settings.pop(k, None)
        return json_safe(settings)

    def _write_history(self) -> None:
        doc = {"settings": self._shared_settings(), "rounds": self.history}
        tmp = self.output_dir / "history.json.tmp"
        tmp.write_text(json.dumps(json_safe(doc), indent=2, allow_nan=False, default=str))
        tmp.replace(self.output_dir / "history.json")


class RecordingStrategy(FedAvg):
    """FedAvg (or, mixed in first, any FedAvg subclass) that checks every update, then hands each round's
    aggregates to a recorder.

    Replies are read by record name: one without a ``"metrics"`` record (or, in training, an
    ``"arrays"`` record) is left out of the round with a warning; error replies are logged by Flower.
    An update with other weight names, shapes or dtypes, a NaN or infinite value, or a change of the
    model far beyond the round's others (``update-norm-ratio``) or larger than the model itself is
    rejected with a logged reason, and the rest are aggregated. A round with fewer answering hospitals
    than ``min-nodes`` keeps the model. ``round_offset`` numbers the rounds of a resumed run.
    ``learning_rate`` (round -> rate, the run's schedule) sets each round's ``learning-rate`` in what the
    hospitals receive.
    """

    def __init__(
        self,
        *,
        recorder: FederationRecorder,
        min_replies: int = 1,
        norm_ratio: float = 10.0,
        learning_rate: Callable[[int], float],
        **kwargs: Any,
    ) -> None:
        super().__init__(
            train_metrics_aggr_fn=lambda records, key: MetricRecord(dict(train_figures(records, key))),
            evaluate_metrics_aggr_fn=lambda records, _key: MetricRecord(dict(evaluate_figures(records))),
            **kwargs,
        )
        self.recorder = recorder
        self.min_replies = min_replies
        self.norm_ratio = norm_ratio
        self.learning_rate = learning_rate  # each round's rate (the run's schedule)
        self.round_offset = 0
        self._global: dict[str, torch.Tensor] | None = None  # the weights sent out this round
        self._accepted_norms: list[float] = []  # the last round's accepted changes (a reference for the next)

    def configure_train(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Any:
        self._global = arrays.to_torch_state_dict()
        server_round += self.round_offset
        config = ConfigRecord(dict(config) | {"learning-rate": self.learning_rate(server_round)})
        return super().configure_train(server_round, arrays, config, grid)

    def configure_evaluate(self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid) -> Any:
        return super().configure_evaluate(server_round + self.round_offset, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        server_round += self.round_offset
        readable = self._readable(server_round, replies, "train")
        answered = [m for m in readable if not m.has_error()]
        sites = self.recorder.site_entries(readable)
        if len(answered) < self.min_replies:
            log.warning(
                "round %d: %d of the %d hospitals this round needs answered in time: the model is unchanged",
                server_round,
                len(answered),
                self.min_replies,
            )
            self.recorder.record(server_round, "train", {"train_sites": 0}, sites=sites)
            return None, None
        # A hospital without aorta labels trains nothing (0 examples): its unchanged weights stay out of the
        # average, and a round in which no hospital trained keeps the current model.
        trained = [m for m in answered if int(m.content[METRICS_RECORD].get("num-examples", 0)) > 0]
        trained, rejected = self._screen(server_round, trained)
        by_site = {e["site"]: e for e in sites}
        for msg, reason in rejected:
            by_site[self._site_of(msg)]["rejected"] = reason
        if not trained:
            why = "every update was rejected" if rejected else "no aorta labels or no privacy budget left"
            log.warning("round %d: no hospital trained (%s): the model is unchanged", server_round, why)
            figures: dict[str, Any] = {"train_sites": 0, "rejected_updates": len(rejected)}
            self.recorder.record(server_round, "train", figures, sites=sites)
            return None, None
        arrays, metrics = super().aggregate_train(server_round, trained)
        if metrics is not None:
            refused = sum(1 for e in sites if e.get("dp_refused"))
            metrics["dp_refused_sites"] = refused  # over their privacy budget: trained nothing
            metrics["label_free_sites"] = len(answered) - len(trained) - len(rejected) - refused
            metrics["rejected_updates"] = len(rejected)
            self.recorder.record(server_round, "train", dict(metrics), sites=sites)
        return arrays, metrics

    def _site_of(self, msg: Message) -> int:
        m = msg.content[METRICS_RECORD]
        return int(m["site-index"]) if "site-index" in m else self.recorder.site_index(msg.metadata.src_node_id)

    def _screen(self, server_round: int, replies: list[Message]) -> tuple[list[Message], list[tuple[Message, str]]]:
        """Split the training replies into those that may be averaged and those rejected, with the reason."""
        if self._global is None:  # aggregate without configure (tests drive it so): nothing to compare to
            return replies, []
        rejected: list[tuple[Message, str]] = []
        norms: dict[int, float] = {}
        ok: list[Message] = []
        base = model_norm(self._global)
        for msg in replies:
            try:
                update = msg.content[ARRAYS_RECORD].to_torch_state_dict()
            except Exception as err:  # arrays that do not even convert
                rejected.append((msg, f"unreadable weights ({type(err).__name__})"))
                continue
            problem = update_problem(update, self._global)
            if problem is None:
                norms[id(msg)] = change_norm(update, self._global)
                if base > 0 and norms[id(msg)] > MAX_RELATIVE_CHANGE * base:
                    problem = (
                        f"its change of the model ({norms[id(msg)]:.3g}) is larger than the model itself ({base:.3g})"
                    )
            if problem is None:
                ok.append(msg)
            else:
                rejected.append((msg, problem))
        kept = []
        for msg in ok:
            others = [norms[id(o)] for o in ok if o is not msg] + self._accepted_norms
            if others:
                reference = float(torch.tensor(others).median())
                if norms[id(msg)] > self.norm_ratio * max(reference, 1e-12):
                    rejected.append(
                        (
                            msg,
                            f"its change of the model ({norms[id(msg)]:.3g}) is over {self.norm_ratio:g} times "
                            f"the other updates' median ({reference:.3g})",
                        )
                    )
                    continue
            kept.append(msg)
        if kept:
            self._accepted_norms = [norms[id(m)] for m in kept]
            log.info(
                "round %d: accepted updates change the model by %s of its norm",
                server_round,
                ", ".join(f"{norms[id(m)] / base:.3f}" for m in kept) if base > 0 else "-",
            )
        for msg, reason in rejected:
            log.warning("round %d: update from site %d rejected: %s", server_round, self._site_of(msg), reason)
        return kept, rejected

    def aggregate_evaluate(self, server_round: int, replies: Iterable[Message]) -> MetricRecord | None:
        server_round += self.round_offset
        readable = self._readable(server_round, replies, "evaluate")
        metrics = super().aggregate_evaluate(server_round, readable)
        if metrics is None:
            return None
        ok = [dict(m.content[METRICS_RECORD]) for m in readable if not m.has_error()]
        total = sum_stats({k: v for k, v in m.items() if k in ("hist-pos", "hist-neg")} for m in ok)
        if "hist-pos" in total and "hist-neg" in total:
            self.recorder.keep_histograms(server_round, total["hist-pos"], total["hist-neg"])
        self.recorder.record(server_round, "evaluate", dict(metrics))
        return MetricRecord(_finite(metrics))  # Flower's own summary; the history keeps NaN as null

    def end_of_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Flower's ``evaluate_fn``, numbered for a resumed run (whose starting checkpoint is kept as it is)."""
        if server_round == 0 and self.round_offset > 0:
            return None
        return self.recorder.end_of_round(server_round + self.round_offset, arrays)

    def _readable(self, server_round: int, replies: Iterable[Message], stage: Stage) -> list[Message]:
        kept = []
        for msg in replies:
            if not msg.has_error():
                missing = [] if METRICS_RECORD in msg.content.metric_records else [METRICS_RECORD]
                if stage == "train" and ARRAYS_RECORD not in msg.content.array_records:
                    missing.append(ARRAYS_RECORD)
                if missing:
                    log.warning(
                        "round %d: %s reply from node %d has no %s record; ignored",
                        server_round,
                        stage,
                        msg.metadata.src_node_id,
                        " or ".join(repr(m) for m in missing),
                    )
                    continue
            kept.append(msg)
        return kept


class RecordingFedProx(RecordingStrategy, FedProx):
    """FedProx (the proximal term is sent to, and added by, the hospitals) with the same checks and recording."""


class RecordingMedian(RecordingStrategy, FedMedian):
    """The coordinate-wise median of the updates (Flower's FedMedian)."""


class RecordingTrimmedMean(RecordingStrategy, FedTrimmedAvg):
    """The coordinate-wise mean without the ``trim-beta`` fraction at each end (Flower's FedTrimmedAvg)."""


class RecordingKrum(RecordingStrategy, Krum):
    """The one update closest to the others (Flower's Krum, tolerating one malicious hospital)."""


def output_dir_for(settings: RunSettings, context: Context) -> Path:
    if settings.output_dir:
        return Path(settings.output_dir)
    return Path.home() / "fedaaa-runs" / f"run-{context.run_id}"


def make_strategy(settings: RunSettings, recorder: FederationRecorder) -> RecordingStrategy:
    """The coordinator's aggregation rule (run config ``strategy``), with the checks and recording."""
    common: dict[str, Any] = dict(
        recorder=recorder,
        min_replies=settings.min_nodes,
        norm_ratio=settings.update_norm_ratio,
        learning_rate=settings.round_learning_rate,
        fraction_train=settings.fraction_train,
        fraction_evaluate=settings.fraction_evaluate,
        min_train_nodes=settings.min_nodes,
        min_evaluate_nodes=settings.min_nodes if settings.fraction_evaluate > 0 else 0,
        min_available_nodes=settings.min_nodes,
    )
    if settings.strategy == "fedprox" or (settings.strategy == "fedavg" and settings.proximal_mu > 0):
        return RecordingFedProx(proximal_mu=settings.proximal_mu, **common)
    if settings.strategy == "median":
        return RecordingMedian(**common)
    if settings.strategy == "trimmed-mean":
        return RecordingTrimmedMean(beta=settings.trim_beta, **common)
    if settings.strategy == "krum":
        return RecordingKrum(num_malicious_nodes=1, **common)
    return RecordingStrategy(**common)


def _network_module() -> ModuleType:
    """``fedaaa.common.model`` (the network, built with MONAI), imported on first use only.

    In a simulation the ServerApp's ``main`` runs in one thread while Flower loads the ClientApp, which
    imports MONAI too, in another; two threads importing MONAI's package at once can deadlock in
    importlib (seen as ``KeyError: 'monai'``). Flower loads apps under its own import lock, so the lazy
    import takes the same lock (falling back to none if a Flower release renames it).
    """
    try:
        from flwr.supercore.object_ref import _import_lock as lock
    except ImportError:  # pragma: no cover - another Flower release
        lock = contextlib.nullcontext()
    with lock:
        return importlib.import_module("fedaaa.common.model")


def _start(settings: RunSettings, arch: ArchSettings) -> dict:
    """Round 1's weights: the ``initial-model`` file's (pre-trained elsewhere), or the network's own random ones."""
    network = _network_module()  # builds the network (MONAI): only here, once
    if settings.initial_model:
        log.info("starting from the weights of %s", settings.initial_model)
        return network.starting_state(settings.initial_model, arch)
    return network.initial_state(arch)


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = RunSettings.from_run_config(context.run_config)
    output_dir = output_dir_for(settings, context)
    torch.manual_seed(settings.seed)
    recorder = FederationRecorder(output_dir, settings)
    done, weights = recorder.resume()  # a coordinator restarted on the same output folder goes on from there
    strategy = make_strategy(settings, recorder)
    strategy.round_offset = done
    if done < settings.num_server_rounds:
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(weights if weights is not None else _start(settings, recorder.arch)),
            num_rounds=settings.num_server_rounds - done,
            timeout=settings.round_timeout,
            train_config=ConfigRecord(settings.round_config() | {RUN_KEY: recorder.run_key}),
            evaluate_fn=strategy.end_of_round,
        )
        # the last aggregate; a resumed run whose new rounds all kept the model ends with its checkpoint
        final = result.arrays if len(result.arrays) or weights is None else ArrayRecord(weights)
    else:
        log.info("%s already holds all %d rounds: writing the final model only", output_dir, done)
        final = ArrayRecord(weights)
    path = recorder.finish(final, settings.num_server_rounds)
    log.info("global model written to %s", path)
