"""The baselines a federation is judged against, trained by the same code on the same data (``fedaaa train``).

- **pooled**: every hospital's training studies in one place (what a federation tries to reach);
- **local-only**: each hospital alone, on its own studies.

Training runs in blocks of ``local_epochs`` epochs, one block per federated round (block k uses seed + k,
like round k at a hospital), so a baseline sees its data as often as a federation's hospitals do. After
every block the model is validated on the same validation studies the federation would use, and the run
writes what a federation writes: per-block checkpoints, ``history.json`` and a calibrated
``global_model.safetensors``, through the coordinator's own :class:`~fedaaa.server.app.FederationRecorder`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from flwr.app import ArrayRecord

from fedaaa.common.cache import InputCache
from fedaaa.common.config import PREPROCESS, RunSettings
from fedaaa.common.errors import ConfigError
from fedaaa.common.metrics import summarize
from fedaaa.common.model import AortaNet, starting_state
from fedaaa.common.site import Site, StudySet
from fedaaa.common.training import evaluate_local, pick_device, train_local
from fedaaa.server.app import FederationRecorder

log = logging.getLogger("fedaaa.baselines")


def merge(sets: Sequence[StudySet | None]) -> StudySet | None:
    """One study set holding every study of ``sets`` (None when all are empty)."""
    kept = [s for s in sets if s is not None and len(s)]
    if not kept:
        return None
    out = StudySet(spacing_mm=kept[0].spacing_mm)
    for s in kept:
        for image, label, aaa, diameter in zip(s.images, s.labels, s.aaa, s.diameters):
            out.add(image, label, aaa, diameter)
    return out


def load_splits(sites: Sequence[Path], cache: InputCache) -> tuple[StudySet | None, StudySet | None]:
    """The training and validation studies of ``sites``, pooled."""
    train = [Site(s).load("train", PREPROCESS, cache).data for s in sites]
    val = [Site(s).load("val", PREPROCESS, cache).data for s in sites]
    return merge(train), merge(val)


def train_centralised(
    sites: Sequence[Path],
    output_dir: Path,
    settings: RunSettings,
    cache: InputCache,
    on_block: Callable[[int, int, dict], None] | None = None,
    max_seconds: float | None = None,
) -> dict:
    """Train one model on the pooled training studies of ``sites`` (one site: local-only) for
    ``num_server_rounds`` blocks of ``local_epochs`` epochs, or fewer when ``max_seconds`` of training have
    passed (it stops after the block that spent them); returns the history (as ``history.json``)."""
    train, val = load_splits(sites, cache)
    if train is None or not train.masked:
        raise ConfigError(f"no training study with an aorta label in {', '.join(Path(s).name for s in sites)}")
    device = pick_device(settings.device)
    torch.manual_seed(settings.seed)
    model = AortaNet()
    if settings.initial_model:  # the same pre-trained start as the federated arms
        model.load_state_dict(starting_state(settings.initial_model, model.arch))
    model.to(device)
    recorder = FederationRecorder(Path(output_dir), settings.with_overrides(sites=""))
    recorder.end_of_round(0, ArrayRecord(model.cpu().state_dict()))
    rounds = settings.num_server_rounds
    start = time.monotonic()
    for k in range(1, rounds + 1):
        block = replace(settings.train_settings(k), learning_rate=settings.round_learning_rate(k))  # as a federation
        stats = train_local(model, train, block, device)
        recorder.record(
            k,
            "train",
            {
                "train_loss": stats["train-loss"],
                "train_examples": stats["num-examples"],
                "train_sites": len(sites),
                "skipped_studies": 0,
            },
        )
        if val is not None:
            ev = dict(evaluate_local(model, val, device))
            recorder.keep_histograms(k, ev["hist-pos"], ev["hist-neg"])
            recorder.record(k, "evaluate", {f"val_{key}": v for key, v in summarize(ev).items()} | {"val_sites": 1})
        recorder.end_of_round(k, ArrayRecord(model.cpu().state_dict()))
        model.to(device)
        if on_block:
            on_block(k, rounds, recorder.history[-1])
        if max_seconds is not None and k < rounds and time.monotonic() - start >= max_seconds:
            log.info("stopped after block %d of %d: %.0f s of training were allowed", k, rounds, max_seconds)
            rounds = k
            break
    path = recorder.finish(ArrayRecord(model.cpu().state_dict()), rounds)
    log.info("model written to %s", path)
    return {"rounds": recorder.history}


def val_curve(history: dict) -> list[dict]:
    """Per round: the validation figures a learning curve plots."""
    keys = ("val_auroc", "val_diameter_mae_mm", "val_dice", "train_loss")
    return [{"round": r["round"]} | {k: r.get(k, np.nan) for k in keys} for r in history["rounds"] if r["round"] > 0]
