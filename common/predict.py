"""Answering for one CT study: AAA present or not, probability, maximum diameter and what it implies."""

from __future__ import annotations

from pathlib import Path

import torch

from fedaaa.common.clinical import AAA_THRESHOLD_MM, CATEGORIES, DISCLAIMER, diameter_category
from fedaaa.common.errors import REASON_LIMIT, StudyError, describe, printable
from fedaaa.common.model import ModelFile
from fedaaa.common.preprocess import load_study
from fedaaa.common.site import study_path_problem
from fedaaa.common.training import pick_device, predict_batch

ENTRY_LIMIT = 120  # a warning or series label

__all__ = ["CATEGORIES", "DISCLAIMER", "diameter_category", "predict_study"]  # clinical names re-exported


def _error(path: str | Path, reason: str, source: str | Path | None = None) -> dict[str, object]:
    """An input's refusal: ``input`` as given; ``error`` the (printable, capped) file it points to and the
    (printable, capped) reason."""
    shown = printable(path if source is None else source, 160, collapse=False)
    return {"input": str(path), "error": f"{shown}: {printable(reason, REASON_LIMIT)}"}


def predict_study(mf: ModelFile, path: str | Path, device: torch.device | None = None) -> dict[str, object]:
    """One answer per input: the prediction, or ``error`` with a one-sentence reason.

    The study goes through :func:`~fedaaa.common.preprocess.load_study`, the road training takes, uncached
    (prediction never writes into the site's training cache): any failure of reading, preprocessing or
    the network, foreseen or not, is that input's ``error`` (printable, capped), never a traceback. A path
    that is a FIFO, a device, a socket or a symlink loop is refused before anything reads it. ``input`` is
    the path as given; every other text is printable and capped.
    """
    try:
        problem = study_path_problem(path)
        if problem:
            return _error(path, problem)
        device = device or pick_device()
        x, info = load_study(path, mf.preprocess)
        prob, diam = predict_batch(mf.model, x[None], device)
        p, d = float(prob[0]), float(diam[0])
    except StudyError as err:
        return _error(path, err.reason, err.source)
    except Exception as exc:  # a library's failure no check foresaw: this input's answer, not the run's end
        return _error(path, f"cannot be processed ({type(exc).__name__}: {describe(exc)})")
    category, follow_up = diameter_category(d)
    present = p >= mf.threshold
    warnings = [printable(w, ENTRY_LIMIT) for w in info.warnings]
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
        "series": printable(info.series, ENTRY_LIMIT),
    }
