"""Model input: one MONAI pipeline, the same at training and at prediction, cached on disk."""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    BorderPad,
    Compose,
    EnsureTyped,
    MapTransform,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialCrop,
)

from common.dicom_io import CTVolume, read_dicom_study

BODY_LEVEL = 0.02  # scaled intensity above which a voxel is body (fat and denser), not air


@dataclass(frozen=True)
class PreprocessSettings:
    """Fixed physical spacing and field of view of the network input (RAS, mm and voxels)."""

    spacing_mm: tuple[float, float, float] = (2.5, 2.5, 5.0)
    roi_size: tuple[int, int, int] = (64, 64, 48)
    hu_window: tuple[float, float] = (-150.0, 450.0)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "PreprocessSettings":
        raw = json.loads(text)
        return cls(**{k: tuple(v) for k, v in raw.items()})


class CropAroundBodyd(MapTransform):
    """Crop a fixed-size box centred on the body in-plane and on the scanned range along z.

    The abdominal aorta lies just anterior to the spine near the body's in-plane centre, so a box
    around the body centroid holds it whatever the scanner's field of view or table position.
    Parts of the box outside the scan are filled with the air level (0 after scaling).
    """

    def __init__(self, keys, roi_size):
        super().__init__(keys)
        self.roi_size = np.asarray(roi_size)

    def __call__(self, data):
        d = dict(data)
        for key in self.keys:
            img = d[key]
            arr = img[0].detach().cpu().numpy() if isinstance(img, torch.Tensor) else img[0]
            body = arr > BODY_LEVEL
            center = (np.asarray(arr.shape) - 1) / 2.0
            if body.any():
                ii, jj = np.nonzero(body.any(axis=2))
                center[0], center[1] = ii.mean(), jj.mean()
            half = (self.roi_size + 1) // 2
            padded = BorderPad(spatial_border=[int(h) for h in half])(img)
            roi_center = [int(round(c)) + int(h) for c, h in zip(center, half)]
            d[key] = SpatialCrop(roi_center=roi_center, roi_size=self.roi_size.tolist())(padded)
        return d


def build_transform(settings: PreprocessSettings) -> Compose:
    lo, hi = settings.hu_window
    return Compose(
        [
            Orientationd(keys="image", axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
            Spacingd(keys="image", pixdim=settings.spacing_mm, mode="bilinear", padding_mode="zeros"),
            CropAroundBodyd(keys="image", roi_size=settings.roi_size),
            EnsureTyped(keys="image", dtype=torch.float32, track_meta=False),
        ]
    )


def volume_to_input(volume: CTVolume, settings: PreprocessSettings) -> torch.Tensor:
    """A CT volume to the network input, shape (1, *roi_size), intensities in [0, 1]."""
    image = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.hu[None])), affine=torch.from_numpy(volume.affine))
    return build_transform(settings)({"image": image})["image"]


def default_cache_dir() -> Path:
    return Path(os.environ.get("FEDAAA_CACHE_DIR", Path.home() / ".cache" / "fedaaa"))


def study_fingerprint(path: Path) -> str:
    """Identifies a study's files (names, sizes, modification times) without reading pixels."""
    h = hashlib.sha256()
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        st = f.stat()
        h.update(f"{f.relative_to(path) if path.is_dir() else f.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


class InputCache:
    """Preprocessed inputs on disk, keyed by the study's files and the preprocessing settings.

    A hit skips DICOM decoding entirely; a changed file or setting gives a new key, never a stale tensor.
    """

    def __init__(self, settings: PreprocessSettings, cache_dir: Path | None = None):
        self.settings = settings
        self.dir = Path(cache_dir or default_cache_dir())
        self.decoded = 0  # studies decoded from DICOM by this cache object (hits do not count)

    def key(self, path: Path) -> str:
        h = hashlib.sha256((study_fingerprint(path) + self.settings.to_json()).encode())
        return h.hexdigest()[:32]

    def load(self, path: str | Path) -> torch.Tensor:
        path = Path(path).resolve()
        file = self.dir / f"{self.key(path)}.npy"
        if file.exists():
            try:
                return torch.from_numpy(np.load(file).astype(np.float32))
            except (OSError, ValueError):
                file.unlink(missing_ok=True)  # a torn write: recompute
        tensor = volume_to_input(read_dicom_study(path), self.settings)
        self.decoded += 1
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = file.with_suffix(f".{os.getpid()}.tmp.npy")
        stored = tensor.numpy().astype(np.float16)  # hits and misses return the same values
        np.save(tmp, stored)
        os.replace(tmp, file)
        return torch.from_numpy(stored.astype(np.float32))
