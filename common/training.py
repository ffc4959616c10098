"""Local training and evaluation; evaluation returns sufficient statistics that are safe to share."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from fedaaa.common.metrics import EvaluationStats, TrainStats, evaluation_stats
from fedaaa.common.model import AAANet, aaa_loss
from fedaaa.common.settings import TrainSettings

__all__ = ["TrainSettings", "evaluate_local", "pick_device", "predict_batch", "predict_dataset", "train_local"]


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def train_local(model: AAANet, data: TensorDataset, settings: TrainSettings, device: torch.device) -> TrainStats:
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


def predict_dataset(
    model: AAANet, data: TensorDataset, device: torch.device, batch_size: int = 8
) -> tuple[np.ndarray, np.ndarray]:
    """Probabilities and diameters (mm) for every example of ``data``, in order."""
    probs, diams = [], []
    for x, _, _ in DataLoader(data, batch_size=batch_size):
        p, d = predict_batch(model, x, device)
        probs.append(p)
        diams.append(d)
    return np.concatenate(probs), np.concatenate(diams)


def evaluate_local(model: AAANet, data: TensorDataset, device: torch.device, threshold: float = 0.5) -> EvaluationStats:
    prob, diam = predict_dataset(model, data, device)
    _, aaa, diam_true = data.tensors
    return evaluation_stats(prob, diam, aaa.numpy(), diam_true.numpy(), threshold)
