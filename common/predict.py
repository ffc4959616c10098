"""Answering for one CT study: AAA present or not, probability, maximum diameter and what it implies."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch

from fedaaa.common.clinical import AAA_THRESHOLD_MM, CATEGORIES, DISCLAIMER, diameter_category
from fedaaa.common.errors import REASON_LIMIT, StudyError, describe, printable
from fedaaa.common.measure import Measurement
from fedaaa.common.model import ModelFile
from fedaaa.common.preprocess import StudyInput, load_study_input
from fedaaa.common.segment import measure_input
from fedaaa.common.site import study_path_problem
from fedaaa.common.training import pick_device

ENTRY_LIMIT = 120  # a warning or series label

__all__ = [
    "CATEGORIES",
    "DISCLAIMER",
    "ReportRequest",
    "diameter_category",
    "predict_study",
]  # clinical names re-exported


def _error(path: str | Path, reason: str, source: str | Path | None = None) -> dict[str, object]:
    """An input's refusal: ``input`` as given; ``error`` the (printable, capped) file it points to and the
    (printable, capped) reason."""
    shown = printable(path if source is None else source, 160, collapse=False)
    return {"input": str(path), "error": f"{shown}: {printable(reason, REASON_LIMIT)}"}


def _location(m: Measurement) -> dict[str, object]:
    """Where the maximum was measured: the centreline point (RAS mm, scanner coordinates) and the caliper."""
    sec = m.max_section
    assert sec is not None
    return {
        "ras_mm": [round(float(v), 1) for v in sec.centre_mm],
        "caliper_ras_mm": [[round(float(v), 1) for v in end] for end in sec.ends_mm],
        "axial_level_mm": round(float(sec.centre_mm[2]), 1),
    }


def predict_study(
    mf: ModelFile, path: str | Path, device: torch.device | None = None, report: ReportRequest | None = None
) -> dict[str, object]:
    """One answer per input: the prediction, or ``error`` with a one-sentence reason.

    The study goes through :func:`~fedaaa.common.preprocess.load_study_input`, the road training takes,
    uncached (prediction never writes into the site's training cache); the network segments the aorta, the
    maximum outer-to-outer diameter is measured across the centreline, and the probability is the model's
    calibration of that diameter. An aorta that is not found or not measurable is said so (``measurable``
    false and ``reason``), never given a number. Any failure of reading, preprocessing or the network,
    foreseen or not, is that input's ``error`` (printable, capped), never a traceback. A path that is a
    FIFO, a device, a socket or a symlink loop is refused before anything reads it. ``input`` is the path
    as given; every other text is printable and capped. With ``report``, the images of the measurement are
    written (:mod:`fedaaa.common.report`) and named in ``report``.
    """
    try:
        problem = study_path_problem(path)
        if problem:
            return _error(path, problem)
        device = device or pick_device()
        loaded = load_study_input(path, mf.preprocess)
        prob, m = measure_input(mf.model, loaded.image, loaded.affine, device)
    except StudyError as err:
        return _error(path, err.reason, err.source)
    except Exception as exc:  # a library's failure no check foresaw: this input's answer, not the run's end
        return _error(path, f"cannot be processed ({type(exc).__name__}: {describe(exc)})")
    info = loaded.info
    warnings = [printable(w, ENTRY_LIMIT) for w in (*info.warnings, *m.warnings)]
    if info.slice_spacing_mm > 5.0:
        warnings.append(f"slice spacing {info.slice_spacing_mm:.1f} mm is coarse; diameter less reliable")
    answer: dict[str, object] = {"input": str(path), "aorta_found": bool(m.found), "measurable": bool(m.measurable)}
    if m.measurable and m.max_diameter_mm is not None:
        d = float(m.max_diameter_mm)
        p = float(mf.calibration.probability(d))
        present = p >= mf.threshold
        category, follow_up = diameter_category(d)
        if present != (d >= AAA_THRESHOLD_MM):
            warnings.append(
                f"the decision (probability {p:.2f} against the model's threshold {mf.threshold:.2f}) and the "
                f"clinical definition (diameter {d:.1f} mm against {AAA_THRESHOLD_MM:.0f} mm) disagree: review the images"
            )
        answer |= {
            "aaa_present": bool(present),
            "aaa_probability": round(p, 4),
            "max_diameter_mm": round(d, 1),
            "diameter_convention": "outer wall to outer wall, perpendicular to the centreline, maximum below the lungs",
            "location": _location(m),
            "category": category,
            "follow_up": follow_up,
        }
    else:
        answer |= {"aaa_present": None, "aaa_probability": None, "max_diameter_mm": None, "reason": m.reason}
    answer |= {"warnings": warnings, "series": printable(info.series, ENTRY_LIMIT)}
    if report is not None:
        try:
            answer["report"] = report.write(path, loaded, prob, m, answer)
        except Exception as exc:  # the answer stands without its pictures
            answer["warnings"].append(f"the report images could not be written ({type(exc).__name__})")
    return answer


class ReportRequest:
    """Where ``fedaaa predict --report-dir`` writes each study's images, with unique names."""

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.entries: list[dict] = []

    def write(self, path: str | Path, loaded: StudyInput, prob: np.ndarray, m: Measurement, answer: dict) -> dict:
        from fedaaa.common.report import write_study_report

        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(str(path)).name.removesuffix(".gz").removesuffix(".nii"))[:60]
        name = f"{len(self.entries) + 1:03d}-{stem or 'study'}"
        files = write_study_report(self.out_dir, name, loaded.image[0].numpy(), loaded.affine, prob, m, answer)
        self.entries.append({"name": str(path), "answer": answer, "files": files})
        return files

    def add_refused(self, path: str | Path, answer: dict) -> None:
        """List a refused input in the index with its reason (it has no pictures)."""
        self.entries.append({"name": str(path), "answer": answer, "files": {}})

    def finish(self) -> Path:
        from fedaaa.common.report import write_index

        return write_index(self.out_dir, self.entries)
