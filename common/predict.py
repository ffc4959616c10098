"""Answering for one CT study: AAA present or not, probability, maximum diameter and what it implies."""

from __future__ import annotations

from pathlib import Path

import torch

from fedaaa.common.clinical import AAA_THRESHOLD_MM, CATEGORIES, DISCLAIMER, diameter_category
from fedaaa.common.errors import StudyError
from fedaaa.common.model import ModelFile
from fedaaa.common.preprocess import load_study
from fedaaa.common.training import pick_device, predict_batch

__all__ = ["CATEGORIES", "DISCLAIMER", "diameter_category", "predict_study"]  # clinical names re-exported


def predict_study(mf: ModelFile, path: str | Path, device: torch.device | None = None) -> dict:
    """One answer per input: the prediction, or ``error`` with a one-sentence reason.

    The study goes through :func:`~fedaaa.common.preprocess.load_study`, the road training takes, uncached
    (prediction never writes into the site's training cache): any failure of reading or preprocessing is
    that input's ``error``, never a traceback.
    """
    device = device or pick_device()
    try:
        x, info = load_study(path, mf.preprocess)
    except StudyError as err:
        return {"input": str(path), "error": str(err)}
    prob, diam = predict_batch(mf.model, x[None], device)
    p, d = float(prob[0]), float(diam[0])
    category, follow_up = diameter_category(d)
    present = p >= mf.threshold
    warnings = list(info.warnings)
    if present != (d >= AAA_THRESHOLD_MM):
        warnings.append(
            f"classifier and diameter disagree (probability {p:.2f}, diameter {d:.1f} mm): review the images"
        )
    if info.slice_spacing_mm > 5.0:
        warnings.append(f"slice spacing {info.slice_spacing_mm:.1f} mm is coarse; diameter less reliable")
    return {
        "input": str(path),
        "aaa_present": bool(present),
        "aaa_probability": round(p, 4),
        "max_diameter_mm": round(d, 1),
        "diameter_convention": "outer wall to outer wall, maximum over the infrarenal aorta",
        "category": category,
        "follow_up": follow_up,
        "warnings": warnings,
        "series": info.series,
    }
