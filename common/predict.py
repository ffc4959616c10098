"""Answering for one CT study: AAA present or not, probability, maximum diameter and what it implies."""

from __future__ import annotations

from pathlib import Path

import torch

from fedaaa.common.dicom_io import read_study
from fedaaa.common.errors import StudyError
from fedaaa.common.model import ModelFile
from fedaaa.common.preprocess import volume_to_input
from fedaaa.common.training import pick_device, predict_batch

DISCLAIMER = "Research software, not a medical device: a radiologist must confirm every finding."

# (upper bound in mm, category, follow-up) from ACR 2013 incidental-findings guidance and SVS 2018.
CATEGORIES = [
    (25.0, "normal", "no aneurysm follow-up"),
    (30.0, "ectatic (25-29 mm)", "ultrasound or CT every 5 years"),
    (35.0, "AAA 30-34 mm", "surveillance every 3 years"),
    (40.0, "AAA 35-39 mm", "surveillance every 2 years"),
    (45.0, "AAA 40-44 mm", "surveillance every year"),
    (50.0, "AAA 45-49 mm", "surveillance every 6 months"),
    (55.0, "AAA 50-54 mm", "surveillance every 3-6 months; repair threshold for women is 50 mm"),
    (float("inf"), "AAA >= 55 mm", "vascular surgery referral: repair threshold reached"),
]


def diameter_category(diameter_mm: float) -> tuple[str, str]:
    """Size category and the follow-up interval it implies."""
    for upper, name, follow_up in CATEGORIES:
        if diameter_mm < upper:
            return name, follow_up
    raise AssertionError("unreachable")


def predict_study(mf: ModelFile, path: str | Path, device: torch.device | None = None) -> dict:
    """One answer per input: the prediction, or ``error`` with a one-sentence reason."""
    device = device or pick_device()
    try:
        volume = read_study(path)
    except StudyError as err:
        return {"input": str(path), "error": str(err)}
    x = volume_to_input(volume, mf.preprocess)[None]
    prob, diam = predict_batch(mf.model, x, device)
    p, d = float(prob[0]), float(diam[0])
    category, follow_up = diameter_category(d)
    present = p >= mf.threshold
    warnings = list(volume.info.get("warnings", []))
    if present != (d >= 30.0):
        warnings.append(
            f"classifier and diameter disagree (probability {p:.2f}, diameter {d:.1f} mm): review the images"
        )
    if volume.info.get("slice_spacing_mm", 0) > 5.0:
        warnings.append(f"slice spacing {volume.info['slice_spacing_mm']:.1f} mm is coarse; diameter less reliable")
    return {
        "input": str(path),
        "aaa_present": bool(present),
        "aaa_probability": round(p, 4),
        "max_diameter_mm": round(d, 1),
        "diameter_convention": "outer wall to outer wall, maximum over the infrarenal aorta",
        "category": category,
        "follow_up": follow_up,
        "warnings": warnings,
        "series": volume.info.get("series", ""),
    }
