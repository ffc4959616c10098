"""A hospital's site folder: its manifest, its studies, and their model inputs."""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import TensorDataset

from fedaaa.common.cache import InputCache
from fedaaa.common.errors import ConfigError
from fedaaa.common.ingest import Prepared, Progress, prepare_studies
from fedaaa.common.preprocess import PreprocessSettings

log = logging.getLogger("fedaaa.site")

REQUIRED_COLUMNS = ("study_id", "path", "aaa", "max_diameter_mm")
SPLITS = ("train", "val", "test")


@dataclass(frozen=True)
class Study:
    study_id: str
    path: Path
    aaa: int
    max_diameter_mm: float  # NaN when the report gave no diameter
    split: str = "train"
    sex: str = ""


def _parse_row(manifest: Path, line: int, row: dict, root: Path) -> Study:
    where = f"{manifest} line {line}"
    study_id = (row.get("study_id") or "").strip()
    if not study_id:
        raise ConfigError(f"{where}: empty study_id")
    rel = (row.get("path") or "").strip()
    if not rel or Path(rel).is_absolute() or ".." in Path(rel).parts:
        raise ConfigError(f"{where}: path must be relative to the site folder, got {rel!r}")
    aaa = (row.get("aaa") or "").strip()
    if aaa not in ("0", "1"):
        raise ConfigError(f"{where}: aaa must be 0 or 1, got {aaa!r}")
    raw_d = (row.get("max_diameter_mm") or "").strip()
    try:
        diameter = float(raw_d) if raw_d else math.nan
    except ValueError:
        raise ConfigError(f"{where}: max_diameter_mm must be a number or empty, got {raw_d!r}") from None
    if raw_d and not 5.0 <= diameter <= 150.0:
        raise ConfigError(f"{where}: max_diameter_mm {diameter} is outside 5-150 mm")
    split = (row.get("split") or "train").strip() or "train"
    if split not in SPLITS:
        raise ConfigError(f"{where}: split must be one of {', '.join(SPLITS)}, got {split!r}")
    return Study(study_id, root / rel, int(aaa), diameter, split, (row.get("sex") or "").strip())


class Site:
    """A site folder: ``SITE/manifest.csv`` plus the studies it names."""

    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        manifest = self.root / "manifest.csv"
        if not manifest.is_file():
            raise ConfigError(f"{manifest}: site manifest not found")
        with manifest.open(newline="", encoding="utf-8-sig") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in REQUIRED_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise ConfigError(f"{manifest}: missing column(s) {', '.join(missing)}")
            self.studies = [_parse_row(manifest, i, row, self.root) for i, row in enumerate(reader, start=2)]
        ids = [s.study_id for s in self.studies]
        if len(set(ids)) != len(ids):
            raise ConfigError(f"{manifest}: duplicated study_id values")

    def split(self, name: str) -> list[Study]:
        return [s for s in self.studies if s.split == name]

    def prepare(
        self,
        studies: list[Study],
        cache: InputCache,
        workers: int | None = 1,
        progress: Progress | None = None,
        *,
        rehash: bool = False,
    ) -> list[Prepared]:
        """Cache entries of ``studies`` (decoded in parallel where missing); refusals logged by study id.
        ``rehash`` hashes every study's bytes even when the cache's content index knows them."""
        prepared = prepare_studies([s.path for s in studies], cache, workers, progress, rehash=rehash)
        for study, p in zip(studies, prepared):
            if p.error:
                log.warning("skipped study %s: %s", study.study_id, p.error)
        return prepared

    def load(
        self,
        split: str,
        settings: PreprocessSettings,
        cache: InputCache | None = None,
        workers: int | None = 1,
        progress: Progress | None = None,
    ) -> LoadedSplit:
        """Model inputs and labels of one split; unusable studies are skipped with a logged reason.

        Every study goes through :func:`~fedaaa.common.preprocess.load_study` (via the cache), as in
        ``fedaaa predict`` and ``fedaaa site check``."""
        cache = cache or InputCache(settings)
        studies = self.split(split)
        images, aaa, diam, skipped = [], [], [], {}
        for study, p in zip(studies, self.prepare(studies, cache, workers, progress)):
            if p.error:
                skipped[study.study_id] = p.error
                continue
            images.append(cache.tensor(p.key))
            aaa.append(study.aaa)
            diam.append(study.max_diameter_mm)
        if images:
            data = TensorDataset(torch.stack(images), torch.tensor(aaa), torch.tensor(diam, dtype=torch.float32))
        else:
            data = None
        return LoadedSplit(data, skipped)


@dataclass
class LoadedSplit:
    data: TensorDataset | None  # (image, aaa, max_diameter_mm); None when no study was usable
    skipped: dict[str, str]  # study_id -> reason (kept at the site)

    def __len__(self) -> int:
        return 0 if self.data is None else len(self.data)
