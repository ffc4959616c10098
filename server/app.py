"""Flower ServerApp: FedAvg rounds over the hospitals, a checkpoint and a history line per round."""

from __future__ import annotations

import json
import logging
import math
import time
from pathlib import Path

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord, RecordDict
from flwr.serverapp import Grid, ServerApp
from flwr.serverapp.strategy import FedAvg, FedProx

from fedaaa.common.config import PREPROCESS, RunSettings
from fedaaa.common.model import AAANet, ModelFile, save_model
from fedaaa.common.training import sum_stats, summarize

log = logging.getLogger("flwr.fedaaa.server")
app = ServerApp()

# What the coordinator sends each round (clients fall back to their run config for the rest).
ROUND_KEYS = ("local-epochs", "batch-size", "learning-rate", "weight-decay", "diameter-weight", "proximal-mu")


def _finite(d: dict) -> dict:
    return {k: v for k, v in d.items() if not (isinstance(v, float) and math.isnan(v))}


class FederationRecorder:
    """Aggregates what hospitals report and writes one checkpoint and history entry per round."""

    def __init__(self, output_dir: Path, settings: RunSettings):
        self.output_dir = output_dir
        self.settings = settings
        self.history: list[dict] = []
        self._train: dict = {}
        self._evaluate: dict = {}
        self.trained_rounds = 0
        self._t0 = time.time()
        (output_dir / "checkpoints").mkdir(parents=True, exist_ok=True)

    def aggregate_train(self, records: list[RecordDict], weight_key: str) -> MetricRecord:
        metrics = [next(iter(r.metric_records.values())) for r in records]
        n = sum(int(m[weight_key]) for m in metrics)
        self._train = {
            "train_loss": sum(float(m["train-loss"]) * int(m[weight_key]) for m in metrics) / max(n, 1),
            "train_examples": n,
            "train_sites": len(metrics),
            "skipped_studies": sum(int(m.get("skipped-studies", 0)) for m in metrics),
        }
        return MetricRecord(self._train)

    def aggregate_evaluate(self, records: list[RecordDict], weight_key: str) -> MetricRecord:
        stats = sum_stats([dict(next(iter(r.metric_records.values()))) for r in records])
        self._evaluate = {f"val_{k}": v for k, v in summarize(stats).items()} | {"val_sites": len(records)}
        return MetricRecord(_finite(self._evaluate))

    def end_of_round(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        """Called by the strategy before round 1 (round 0) and after every round."""
        model = AAANet()
        model.load_state_dict(arrays.to_torch_state_dict())
        entry = {"round": server_round, "elapsed_s": round(time.time() - self._t0, 1)}
        if server_round > 0:
            entry |= self._train | self._evaluate
            self.trained_rounds += bool(self._train)
        self._train, self._evaluate = {}, {}  # a round without replies records nothing stale
        self.history.append(entry)
        summary = {k: v for k, v in entry.items() if k != "elapsed_s"}
        ckpt = self.output_dir / "checkpoints" / f"round-{server_round:03d}.safetensors"
        save_model(ckpt, ModelFile(model, PREPROCESS, round=server_round, summary=summary))
        self._write_history()
        if server_round > 0:
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
        if not self.trained_rounds:
            raise RuntimeError("no hospital returned a model update in any round; see the node logs")
        model = AAANet()
        model.load_state_dict(arrays.to_torch_state_dict())
        summary = self.history[-1] if self.history else {}
        return save_model(
            self.output_dir / "global_model.safetensors", ModelFile(model, PREPROCESS, round=rounds, summary=summary)
        )

    def _write_history(self) -> None:
        doc = {"settings": self.settings.to_run_config(), "rounds": self.history}
        for k in ("sites", "output-dir", "cache-dir"):  # local paths stay out of the shared record
            doc["settings"].pop(k, None)
        tmp = self.output_dir / "history.json.tmp"
        tmp.write_text(json.dumps(doc, indent=2, allow_nan=False, default=str).replace("NaN", "null"))
        tmp.replace(self.output_dir / "history.json")


def output_dir_for(settings: RunSettings, context: Context) -> Path:
    if settings.output_dir:
        return Path(settings.output_dir)
    return Path.home() / "fedaaa-runs" / f"run-{context.run_id}"


def make_strategy(settings: RunSettings, recorder: FederationRecorder) -> FedAvg:
    common = dict(
        fraction_train=settings.fraction_train,
        fraction_evaluate=settings.fraction_evaluate,
        min_train_nodes=settings.min_nodes,
        min_evaluate_nodes=settings.min_nodes if settings.fraction_evaluate > 0 else 0,
        min_available_nodes=settings.min_nodes,
        train_metrics_aggr_fn=recorder.aggregate_train,
        evaluate_metrics_aggr_fn=recorder.aggregate_evaluate,
    )
    if settings.proximal_mu > 0:
        return FedProx(proximal_mu=settings.proximal_mu, **common)
    return FedAvg(**common)


@app.main()
def main(grid: Grid, context: Context) -> None:
    settings = RunSettings.from_run_config(context.run_config)
    output_dir = output_dir_for(settings, context)
    torch.manual_seed(settings.seed)
    recorder = FederationRecorder(output_dir, settings)
    run_config = settings.to_run_config()
    result = make_strategy(settings, recorder).start(
        grid=grid,
        initial_arrays=ArrayRecord(AAANet().state_dict()),
        num_rounds=settings.num_server_rounds,
        train_config=ConfigRecord({k: run_config[k] for k in ROUND_KEYS}),
        evaluate_fn=recorder.end_of_round,
    )
    path = recorder.finish(result.arrays, settings.num_server_rounds)
    log.info("global model written to %s", path)
