"""Local training and evaluation; evaluation returns sufficient statistics that are safe to share."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator

import numpy as np
import torch
from monai.transforms import (
    Compose,
    RandAdjustContrastd,
    RandAffined,
    RandBiasFieldd,
    RandCropByPosNegLabeld,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandHistogramShiftd,
    RandScaleIntensityd,
    RandShiftIntensityd,
    RandSimulateLowResolutiond,
    ScaleIntensityRanged,
    SpatialPadd,
)

from fedaaa.common.errors import ConfigError
from fedaaa.common.metrics import EvaluationStats, TrainStats, evaluation_stats
from fedaaa.common.model import AortaNet, segmentation_loss
from fedaaa.common.segment import abdominal_levels, aorta_probability, measure_levels
from fedaaa.common.settings import TrainSettings
from fedaaa.common.site import StudySet

__all__ = [
    "TrainSettings",
    "evaluate_local",
    "loader_workers",
    "measure_maps",
    "pick_device",
    "predict_set",
    "train_local",
    "training_transform",
]


def pick_device(preference: str = "auto") -> torch.device:
    if preference == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(preference)


def training_transform(patch_size: tuple[int, ...], samples: int) -> Compose:
    """Random patches around and away from the aorta (2:1), then what a renderer or a scanner may vary, in
    the spirit of SynthSeg (Billot et al. 2023: randomise what is not anatomy): orientation and size a
    little; a random non-linear intensity curve (every tissue's brightness moves against its neighbours'),
    a smooth bias field, gamma, brightness; blur and resolution down to a 3 mm scan's; noise. The labels
    follow every spatial change; intensities end clipped to the input's [0, 1]."""
    keys = ["image", "label"]
    return Compose(
        [
            SpatialPadd(keys=keys, spatial_size=patch_size),
            RandCropByPosNegLabeld(
                keys=keys, label_key="label", spatial_size=patch_size, pos=2, neg=1, num_samples=samples
            ),
            RandAffined(
                keys=keys,
                prob=0.5,
                rotate_range=(0.15, 0.15, 0.4),
                scale_range=(0.12, 0.12, 0.12),
                mode=("bilinear", "nearest"),
                padding_mode="zeros",
            ),
            RandHistogramShiftd(keys="image", prob=0.5, num_control_points=(6, 12)),
            RandBiasFieldd(keys="image", prob=0.3, coeff_range=(0.0, 0.15)),
            RandAdjustContrastd(keys="image", prob=0.5, gamma=(0.6, 1.6)),
            RandScaleIntensityd(keys="image", prob=0.5, factors=0.2),
            RandShiftIntensityd(keys="image", prob=0.5, offsets=0.08),
            RandGaussianSmoothd(keys="image", prob=0.5, sigma_x=(0.3, 2.0), sigma_y=(0.3, 2.0), sigma_z=(0.3, 1.5)),
            RandSimulateLowResolutiond(keys="image", prob=0.25, zoom_range=(0.4, 0.9)),
            RandGaussianNoised(keys="image", prob=0.5, std=0.05),
            ScaleIntensityRanged(keys="image", a_min=0.0, a_max=1.0, b_min=0.0, b_max=1.0, clip=True),
        ]
    )


class _EpochPatches(torch.utils.data.Dataset):
    """Item k: the augmented patches of study ``order[k]``, drawn with its own seed ``seeds[k]``, so an
    epoch's patches are the same whether one process or several loader workers make them."""

    def __init__(
        self, data: StudySet, order: np.ndarray, seeds: np.ndarray, patch_size: tuple[int, ...], samples: int
    ) -> None:
        self.data, self.order, self.seeds = data, order, seeds
        self.transform = training_transform(patch_size, samples)

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, k: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        i = int(self.order[k])
        self.transform.set_random_state(seed=int(self.seeds[k]))
        samples = self.transform({"image": self.data.images[i], "label": self.data.labels[i]})
        return [(torch.as_tensor(s["image"]).float(), torch.as_tensor(s["label"]).float()) for s in samples]


def _as_is(item: list) -> list:
    return item


def loader_workers(device: torch.device) -> int:
    """Processes that augment training patches beside the training loop: none on a CPU (its cores run the
    network), up to 8 beside a GPU (else the GPU waits for the CPU). ``FEDAAA_LOADER_WORKERS`` overrides."""
    env = os.environ.get("FEDAAA_LOADER_WORKERS", "").strip()
    if env:
        try:
            return max(0, min(int(env), 64))
        except ValueError:
            raise ConfigError(f"FEDAAA_LOADER_WORKERS must be a whole number, not {env[:40]!r}") from None
    if device.type == "cpu":
        return 0
    return max(0, min(8, (os.cpu_count() or 1) - 1))


def _batches(
    data: StudySet, settings: TrainSettings, patch_size: tuple[int, ...], rng: np.random.Generator, workers: int = 0
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """One epoch of (images, labels) batches of random augmented patches from the masked studies, in a
    random study order; ``workers`` loader processes make them ahead (the same patches as none)."""
    order = rng.permutation(data.masked)
    seeds = rng.integers(2**31, size=len(order))
    source = _EpochPatches(data, order, seeds, patch_size, settings.patches_per_study)
    items = (
        torch.utils.data.DataLoader(source, batch_size=None, collate_fn=_as_is, num_workers=workers, prefetch_factor=4)
        if workers
        else (source[k] for k in range(len(source)))
    )
    images, labels = [], []
    for item in items:
        for image, label in item:
            images.append(image)
            labels.append(label)
            if len(images) == settings.batch_size:
                yield torch.stack(images), torch.stack(labels)
                images, labels = [], []
    if images:
        yield torch.stack(images), torch.stack(labels)


def train_local(
    model: AortaNet, data: StudySet, settings: TrainSettings, device: torch.device, workers: int | None = None
) -> TrainStats:
    """Train in place for ``settings.local_epochs`` on the studies that have an aorta label; returns the
    mean loss and the number of studies trained on (0 at a site without labels: it trains nothing and
    its weights do not count in the average). ``workers`` loader processes make the patches (None: see
    :func:`loader_workers`); the result does not depend on how many."""
    if not data.masked:
        return {"train-loss": 0.0, "num-examples": 0}
    torch.manual_seed(settings.seed)
    rng = np.random.default_rng(settings.seed)
    model.to(device).train()
    global_params = [p.detach().clone() for p in model.parameters()] if settings.proximal_mu > 0 else None
    opt = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay)
    loss_fn = segmentation_loss()
    total, seen = 0.0, 0
    workers = loader_workers(device) if workers is None else workers
    for _ in range(settings.local_epochs):
        for x, y in _batches(data, settings, tuple(model.arch.patch_size), rng, workers):
            x, y = x.to(device), y.to(device)
            loss = loss_fn(model(x), y)
            if global_params is not None:
                prox = sum(((p - g) ** 2).sum() for p, g in zip(model.parameters(), global_params))
                loss = loss + settings.proximal_mu / 2 * prox
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(x)
            seen += len(x)
    return {"train-loss": total / max(seen, 1), "num-examples": len(data.masked)}


class _Measured(torch.utils.data.Dataset):
    """Measurements of probability maps, made by loader processes: (diameter or NaN, aorta found) per map."""

    def __init__(self, maps: list[tuple[np.ndarray, np.ndarray]], affine: np.ndarray) -> None:
        self.maps, self.affine = maps, affine

    def __len__(self) -> int:
        return len(self.maps)

    def __getitem__(self, i: int) -> tuple[float, bool]:
        prob, levels = self.maps[i]
        m = measure_levels(prob, self.affine, levels)
        return (float(m.max_diameter_mm) if m.measurable else math.nan), bool(m.found)


def predict_set(model: AortaNet, data: StudySet, device: torch.device, workers: int | None = None) -> list[dict]:
    """Per study of ``data``, in order (kept at the site): measured diameter (NaN when not measurable) and,
    for a labelled study, the Dice overlap counts of the thresholded map against its label.

    ``workers`` processes measure the maps (None: :func:`loader_workers`, i.e. none on a CPU, up to 8 beside a
    GPU, whose maps take far less time than their measurement); the figures do not depend on how many."""
    workers = loader_workers(device) if workers is None else workers
    affine = np.diag([*data.spacing_mm, 1.0])
    out: list[dict] = []
    chunk = 4 * workers if workers else 1  # maps held at once, waiting for their measurement
    for start in range(0, len(data.images), chunk):
        maps, rows = [], []
        for image, label in zip(data.images[start : start + chunk], data.labels[start : start + chunk]):
            prob = aorta_probability(model, image, device)
            row: dict = {}
            if label is not None:
                pred, truth = prob >= 0.5, label[0].numpy() >= 0.5
                row = {"inter": int((pred & truth).sum()), "pred": int(pred.sum()), "true": int(truth.sum())}
            maps.append((prob, abdominal_levels(image[0].numpy())))
            rows.append(row)
        measured = measure_maps(maps, affine, workers)
        out += [{"diameter": d, "found": found} | row for (d, found), row in zip(measured, rows)]
    return out


def measure_maps(
    maps: list[tuple[np.ndarray, np.ndarray]], affine: np.ndarray, workers: int = 0
) -> list[tuple[float, bool]]:
    """Per (probability map, abdominal levels), in order: the measured diameter (NaN when not measurable) and
    whether an aorta was found; ``workers`` loader processes measure them (none: this process)."""
    measured = _Measured(maps, affine)
    if not workers or not maps:
        return [measured[k] for k in range(len(measured))]
    return list(
        torch.utils.data.DataLoader(measured, batch_size=None, collate_fn=_as_is, num_workers=min(workers, len(maps)))
    )


def evaluate_local(
    model: AortaNet, data: StudySet, device: torch.device, workers: int | None = None
) -> EvaluationStats:
    """Sums and counts of this site's studies (no per-study value leaves it); ``workers``: see
    :func:`predict_set`."""
    rows = predict_set(model, data, device, workers)
    return evaluation_stats(
        np.array([r["diameter"] for r in rows], dtype=float),
        np.array(data.aaa),
        np.array(data.diameters, dtype=float),
        dice_counts=[(r["inter"], r["pred"], r["true"]) for r in rows if "inter" in r],
    )
