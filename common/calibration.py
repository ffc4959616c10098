"""The AAA probability from the measured diameter: Platt scaling fitted on validation histograms, the decision
threshold for a stated sensitivity, and the calibration error (NumPy and the standard library only: the
coordinator fits it without torch or MONAI).

The network segments; the diameter is measured; the probability is ``sigmoid(slope * (d - center))``. The
two numbers are fitted on the validation splits' summed histograms of measured diameters (AAA and not),
so no per-patient value ever leaves a hospital.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

from fedaaa.common.clinical import AAA_THRESHOLD_MM

HIST_BIN_MM = 0.5
HIST_MAX_MM = 150.0
HIST_BINS = int(HIST_MAX_MM / HIST_BIN_MM)  # measured diameters 0-150 mm in 0.5 mm bins
TARGET_SENSITIVITY = 0.97
SLOPE_RANGE = (1e-3, 1.5)  # per mm: no sharper than a measurement error of about 1-2 mm allows
CENTER_RANGE = (5.0, 150.0)  # mm


def diameter_bins(d: np.ndarray) -> np.ndarray:
    """The histogram bin of each measured diameter (mm)."""
    return np.clip((np.asarray(d, dtype=float) / HIST_BIN_MM).astype(int), 0, HIST_BINS - 1)


def bin_centers() -> np.ndarray:
    return (np.arange(HIST_BINS) + 0.5) * HIST_BIN_MM


@dataclass(frozen=True)
class Calibration:
    """``P(AAA | measured diameter d) = sigmoid(slope_per_mm * (d - center_mm))``; the default, before any
    fit, is centred on the clinical 30 mm."""

    slope_per_mm: float = 0.8
    center_mm: float = AAA_THRESHOLD_MM
    fitted_on: int = 0  # validation studies it was fitted on (0: the default)

    def probability(self, d: float | np.ndarray) -> np.ndarray:
        z = self.slope_per_mm * (np.asarray(d, dtype=float) - self.center_mm)
        return 1.0 / (1.0 + np.exp(-np.clip(z, -50, 50)))

    def diameter_at(self, p: float) -> float:
        """The diameter whose probability is ``p`` (0 < p < 1)."""
        return self.center_mm + math.log(p / (1 - p)) / self.slope_per_mm

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: object) -> Calibration:
        """Parse and check; a ValueError with one sentence when not a sane calibration."""
        if not isinstance(text, str) or len(text) > 512:
            raise ValueError("the calibration must be a short JSON object")
        try:
            raw = json.loads(text)
        except ValueError:
            raise ValueError("the calibration is not valid JSON") from None
        if not isinstance(raw, dict) or set(raw) != {"slope_per_mm", "center_mm", "fitted_on"}:
            raise ValueError("the calibration must hold slope_per_mm, center_mm and fitted_on")
        slope, center, n = raw["slope_per_mm"], raw["center_mm"], raw["fitted_on"]
        ok = all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in (slope, center))
        if not ok or not SLOPE_RANGE[0] <= slope <= SLOPE_RANGE[1] or not CENTER_RANGE[0] <= center <= CENTER_RANGE[1]:
            raise ValueError(f"the calibration needs a slope in {SLOPE_RANGE} per mm and a centre in {CENTER_RANGE} mm")
        if not isinstance(n, int) or isinstance(n, bool) or n < 0:
            raise ValueError("the calibration's fitted_on must be a count of studies")
        return cls(float(slope), float(center), n)


def fit_platt(hist_pos: Sequence[float], hist_neg: Sequence[float]) -> Calibration:
    """Platt scaling of the measured diameter on binned validation counts (Newton's method on the two
    parameters, with Platt's smoothed targets so that separable data give a finite slope). Falls back to
    the default calibration when either class is missing."""
    pos, neg = np.asarray(hist_pos, dtype=float), np.asarray(hist_neg, dtype=float)
    n_pos, n_neg = pos.sum(), neg.sum()
    if n_pos == 0 or n_neg == 0:
        return Calibration(fitted_on=int(n_pos + n_neg))
    x = bin_centers() - AAA_THRESHOLD_MM
    t_pos, t_neg = (n_pos + 1) / (n_pos + 2), 1 / (n_neg + 2)
    keep = (pos + neg) > 0
    xs = np.concatenate([x[keep], x[keep]])
    w = np.concatenate([pos[keep], neg[keep]])
    t = np.concatenate([np.full(keep.sum(), t_pos), np.full(keep.sum(), t_neg)])
    a, b = 0.5, 0.0  # logit = a * x + b
    for _ in range(100):
        p = 1 / (1 + np.exp(-np.clip(a * xs + b, -50, 50)))
        g = np.array([(w * (p - t) * xs).sum(), (w * (p - t)).sum()])
        h = w * p * (1 - p)
        hess = np.array([[(h * xs * xs).sum(), (h * xs).sum()], [(h * xs).sum(), h.sum()]]) + 1e-6 * np.eye(2)
        step = np.linalg.solve(hess, g)
        step *= min(1.0, 0.5 / max(abs(step[0]), 1e-12), 5.0 / max(abs(step[1]), 1e-12))  # damped Newton
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-8:
            break
    if not a > SLOPE_RANGE[0]:  # larger diameters are not more often AAA here: no fit to trust
        return Calibration(fitted_on=int(n_pos + n_neg))
    slope = float(np.clip(a, *SLOPE_RANGE))
    center = float(np.clip(AAA_THRESHOLD_MM - b / a if a > 0 else AAA_THRESHOLD_MM, *CENTER_RANGE))
    return Calibration(slope, center, int(n_pos + n_neg))


def threshold_for_sensitivity(
    hist_pos: Sequence[float], hist_neg: Sequence[float], calibration: Calibration, target: float = TARGET_SENSITIVITY
) -> float:
    """The probability threshold, chosen on validation counts: among the diameter cuts (bin edges) whose
    sensitivity is at least ``target``, those with the best specificity; the middle of that range of cuts,
    as a probability. Without both classes, the calibrated probability at the clinical 30 mm."""
    pos, neg = np.asarray(hist_pos, dtype=float), np.asarray(hist_neg, dtype=float)
    if pos.sum() == 0 or neg.sum() == 0:
        return float(np.clip(calibration.probability(AAA_THRESHOLD_MM), 0.01, 0.99))
    edges = np.arange(HIST_BINS + 1) * HIST_BIN_MM  # cut at edge k: called AAA when in bin >= k
    sens = np.concatenate([np.cumsum(pos[::-1])[::-1], [0.0]]) / pos.sum()
    spec = np.concatenate([[0.0], np.cumsum(neg)]) / neg.sum()
    ok = sens >= target - 1e-12
    best = spec[ok].max()
    cuts = edges[ok & (spec >= best - 1e-12)]
    cut = 0.5 * (cuts.min() + cuts.max())
    return float(np.clip(calibration.probability(cut), 0.01, 0.99))


def calibrate(
    hist_pos: Sequence[float], hist_neg: Sequence[float], target: float = TARGET_SENSITIVITY
) -> tuple[Calibration, float]:
    """Platt scaling and the probability threshold for ``target`` sensitivity, from validation histograms."""
    cal = fit_platt(hist_pos, hist_neg)
    return cal, threshold_for_sensitivity(hist_pos, hist_neg, cal, target)


def reliability(prob: np.ndarray, truth: np.ndarray, bins: int = 10) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per probability bin: mean predicted probability, observed AAA fraction and count (empty bins NaN)."""
    prob, truth = np.asarray(prob, dtype=float), np.asarray(truth, dtype=float)
    idx = np.minimum((prob * bins).astype(int), bins - 1)
    counts = np.bincount(idx, minlength=bins).astype(float)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_p = np.bincount(idx, weights=prob, minlength=bins) / counts
        frac = np.bincount(idx, weights=truth, minlength=bins) / counts
    return mean_p, frac, counts


def expected_calibration_error(prob: np.ndarray, truth: np.ndarray, bins: int = 10) -> float:
    """ECE: the count-weighted mean |observed fraction - mean probability| over equal-width bins."""
    mean_p, frac, counts = reliability(prob, truth, bins)
    keep = counts > 0
    if not keep.any():
        return math.nan
    return float((counts[keep] * np.abs(frac[keep] - mean_p[keep])).sum() / counts[keep].sum())
