"""Local training and evaluation; evaluation returns sufficient statistics that are safe to share."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedaaa.common.model import AAANet, aaa_loss

SCORE_BINS = 50  # probability histogram bins: enough for AUROC to about 0.01, no per-patient scores


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


@dataclass(frozen=True)
class TrainSettings:
    local_epochs: int = 3
    batch_size: int = 8
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    diameter_weight: float = 1.0
    proximal_mu: float = 0.0  # FedProx term; 0 is plain FedAvg
    seed: int = 0


def train_local(model: AAANet, data: TensorDataset, settings: TrainSettings, device: torch.device) -> dict:
    """Train in place for ``settings.local_epochs``; returns the mean loss and example count."""
    gen = torch.Generator().manual_seed(settings.seed)
    loader = DataLoader(
        data, batch_size=settings.batch_size, shuffle=True, generator=gen, drop_last=len(data) > settings.batch_size
    )
    model.to(device).train()
    global_params = [p.detach().clone() for p in model.parameters()] if settings.proximal_mu > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    total, seen = 0.0, 0
    for _ in range(settings.local_epochs):
        for x, aaa, diam in loader:
            x, aaa, diam = x.to(device), aaa.to(device), diam.to(device)
            logit, pred = model(x)
            loss = aaa_loss(logit, pred, aaa, diam, settings.diameter_weight)
            if global_params is not None:
                prox = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params))
                loss = loss + settings.proximal_mu / 2 * prox
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(x)
            seen += len(x)
    return {"train-loss": total / max(seen, 1), "num-examples": len(data)}


@torch.no_grad()
def predict_batch(model: AAANet, x: torch.Tensor, device: torch.device) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and diameters (mm) for a batch of inputs."""
    model.to(device).eval()
    logit, diam = model(x.to(device))
    return torch.sigmoid(logit).cpu().numpy(), diam.cpu().numpy()


def predict_dataset(model: AAANet, data: TensorDataset, device: torch.device, batch_size: int = 8):
    probs, diams = [], []
    for x, _, _ in DataLoader(data, batch_size=batch_size):
        p, d = predict_batch(model, x, device)
        probs.append(p)
        diams.append(d)
    return np.concatenate(probs), np.concatenate(diams)


def evaluation_stats(
    prob: np.ndarray, diam: np.ndarray, aaa: np.ndarray, diam_true: np.ndarray, threshold: float = 0.5
) -> dict:
    """Sums and counts only (no per-study values): they add up across hospitals."""
    aaa = np.asarray(aaa).astype(bool)
    prob = np.clip(np.asarray(prob, dtype=float), 1e-7, 1 - 1e-7)
    known = np.isfinite(diam_true)
    pred = prob >= threshold
    bins = np.minimum((prob * SCORE_BINS).astype(int), SCORE_BINS - 1)
    return {
        "num-examples": int(len(prob)),
        "bce-sum": float(-(np.log(prob[aaa]).sum() + np.log(1 - prob[~aaa]).sum())),
        "tp": int((pred & aaa).sum()),
        "fp": int((pred & ~aaa).sum()),
        "tn": int((~pred & ~aaa).sum()),
        "fn": int((~pred & aaa).sum()),
        "diameter-n": int(known.sum()),
        "diameter-abs-err-sum": float(np.abs(diam[known] - diam_true[known]).sum()),
        "diameter-sq-err-sum": float(((diam[known] - diam_true[known]) ** 2).sum()),
        "hist-pos": np.bincount(bins[aaa], minlength=SCORE_BINS).tolist(),
        "hist-neg": np.bincount(bins[~aaa], minlength=SCORE_BINS).tolist(),
    }


def evaluate_local(model: AAANet, data: TensorDataset, device: torch.device, threshold: float = 0.5) -> dict:
    prob, diam = predict_dataset(model, data, device)
    _, aaa, diam_true = data.tensors
    return evaluation_stats(prob, diam, aaa.numpy(), diam_true.numpy(), threshold)


def sum_stats(stats: list[dict]) -> dict:
    """Add evaluation statistics from several hospitals (lists add element-wise)."""
    total: dict = {}
    for s in stats:
        for k, v in s.items():
            if isinstance(v, list):
                total[k] = [a + b for a, b in zip(total.get(k, [0] * len(v)), v)]
            else:
                total[k] = total.get(k, 0) + v
    return total


def auroc_from_histograms(pos: list[int], neg: list[int]) -> float:
    """AUROC of binned scores (ties within a bin count one half): Mann-Whitney on the histograms."""
    pos, neg = np.asarray(pos, dtype=float), np.asarray(neg, dtype=float)
    if pos.sum() == 0 or neg.sum() == 0:
        return math.nan
    neg_below = np.concatenate([[0.0], np.cumsum(neg)[:-1]])
    return float((pos * (neg_below + 0.5 * neg)).sum() / (pos.sum() * neg.sum()))


def summarize(stats: dict) -> dict:
    """Headline metrics from summed statistics."""
    n = stats.get("num-examples", 0)
    tp, fp, tn, fn = (stats.get(k, 0) for k in ("tp", "fp", "tn", "fn"))
    dn = stats.get("diameter-n", 0)
    nan = math.nan
    return {
        "n": n,
        "auroc": auroc_from_histograms(stats.get("hist-pos", [0]), stats.get("hist-neg", [0])),
        "sensitivity": tp / (tp + fn) if tp + fn else nan,
        "specificity": tn / (tn + fp) if tn + fp else nan,
        "accuracy": (tp + tn) / n if n else nan,
        "bce": stats.get("bce-sum", 0.0) / n if n else nan,
        "diameter_mae_mm": stats.get("diameter-abs-err-sum", 0.0) / dn if dn else nan,
        "diameter_rmse_mm": math.sqrt(stats.get("diameter-sq-err-sum", 0.0) / dn) if dn else nan,
    }
