"""`fedaaa site check`: a site's data-quality report, computed entirely at the site.

The report has two parts. ``summary`` holds counts and ranges only (no study ids, paths, UIDs or
per-patient values): it is what a coordinator may later be shown. ``studies`` lists each study with its
status and reason, for the hospital's own eyes.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import numpy as np

from fedaaa.common.cache import InputCache
from fedaaa.common.clinical import CATEGORIES, diameter_category
from fedaaa.common.ingest import Progress
from fedaaa.common.site import SPLITS, Site


def _category(text: str) -> str:
    """A reason or warning without its particulars: numbers become N, details in brackets dropped."""
    return re.sub(r"\d+(\.\d+)?", "N", text.split(" (")[0]).strip()


def _range(values: list[float | None]) -> dict[str, float] | None:
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return None
    q = np.percentile(values, [0, 25, 50, 75, 100])
    return {
        "n": len(values),
        "min": round(float(q[0]), 2),
        "p25": round(float(q[1]), 2),
        "median": round(float(q[2]), 2),
        "p75": round(float(q[3]), 2),
        "max": round(float(q[4]), 2),
    }


def check_site(
    site: Site | str | Path, cache: InputCache, workers: int | None = None, progress: Progress | None = None
) -> dict[str, object]:
    """Validate the manifest (raises ConfigError) and every study; return ``{"summary", "studies"}``.

    Every study's bytes are hashed (the cache's content index is refreshed, never trusted, here), so a
    change that kept size and times is still seen; studies load as in training and ``fedaaa predict``."""
    site = site if isinstance(site, Site) else Site(site)
    prepared = site.prepare(site.studies, cache, workers, progress, rehash=True)
    studies, usable = [], []
    for study, p in zip(site.studies, prepared):
        entry = {"study_id": study.study_id, "split": study.split, "status": "refused" if p.error else "usable"}
        if p.error:
            entry["reason"] = f"{p.where}: {p.error}" if p.where else p.error
        else:
            entry["series"] = p.info.series
            entry["skipped_series"] = list(p.info.skipped_series)
            entry["warnings"] = list(p.info.warnings)
            usable.append((study, p.info))
        studies.append(entry)
    refusals = Counter(_category(p.error) for p in prepared if p.error)
    warnings = Counter(_category(w) for _, info in usable for w in info.warnings)
    infos = [info for _, info in usable]
    diameters = [s.max_diameter_mm for s, _ in usable if math.isfinite(s.max_diameter_mm)]
    categories = Counter(diameter_category(d)[0] for d in diameters)
    n_aaa = sum(s.aaa for s, _ in usable)
    contrast = Counter({True: "contrast", False: "no contrast", None: "unknown"}[i.contrast] for i in infos)
    summary = {
        "studies": len(site.studies),
        "usable": len(usable),
        "refused": len(site.studies) - len(usable),
        "splits": {
            name: {"studies": len(site.split(name)), "usable": sum(1 for s, _ in usable if s.split == name)}
            for name in SPLITS
        },
        "refusal_reasons": dict(refusals.most_common()),
        "warnings": dict(warnings.most_common()),
        "labels": {
            "aaa": n_aaa,
            "no_aaa": len(usable) - n_aaa,
            "prevalence": round(n_aaa / len(usable), 3) if usable else None,
        },
        "diameter_mm": _range(diameters),
        "diameter_categories": {c: categories[c] for _, c, _ in CATEGORIES if categories[c]},
        "diameter_missing": len(usable) - len(diameters),
        "slice_spacing_mm": _range([i.slice_spacing_mm for i in infos]),
        "slice_thickness_mm": _range([i.slice_thickness_mm for i in infos]),
        "pixel_spacing_mm": _range([min(i.pixel_spacing_mm) for i in infos]),
        "slices": _range([i.n_slices for i in infos]),
        "manufacturers": dict(Counter(i.manufacturer or "unknown" for i in infos).most_common()),
        "contrast_header": dict(contrast),
        "formats": dict(Counter(i.format for i in infos)),
        "transfer_syntaxes": dict(Counter(i.transfer_syntax or "unknown" for i in infos).most_common()),
        "extra_series_skipped": sum(len(i.skipped_series) for i in infos),
    }
    return {"summary": summary, "studies": studies}
