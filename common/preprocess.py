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

from fedaaa.common.dicom_io import CTVolume, read_study
from fedaaa.common.errors import StudyError, describe

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
    def from_json(cls, text: str) -> PreprocessSettings:
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


# Bump when reading or preprocessing code changes what a study becomes: old cache entries then miss.
PIPELINE_VERSION = 2


def content_digest(path: Path) -> str:
    """SHA-256 of a study's bytes: every file's relative name and content, in name order."""
    h = hashlib.sha256()
    path = Path(path)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for f in files:
        h.update(f"{f.relative_to(path) if path.is_dir() else f.name}\0".encode())
        with f.open("rb") as fh:
            while chunk := fh.read(1 << 20):
                h.update(chunk)
    return h.hexdigest()


class InputCache:
    """Preprocessed inputs on disk, keyed by the study's content and the preprocessing settings.

    Each entry is ``<key>.npy`` (float16 input) and ``<key>.json`` (acquisition facts and warnings, or the
    refusal reason), the JSON written last. A hit skips DICOM decoding entirely; changed bytes, a changed
    setting or a new pipeline version give a new key, never a stale tensor. ``decoded`` counts studies this
    object read from DICOM/NIfTI (hits do not count).
    """

    def __init__(self, settings: PreprocessSettings, cache_dir: Path | None = None):
        self.settings = settings
        self.dir = Path(cache_dir or default_cache_dir())
        self.decoded = 0

    def key(self, path: Path) -> str:
        text = f"{content_digest(Path(path))}|{self.settings.to_json()}|{PIPELINE_VERSION}"
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def _files(self, key: str) -> tuple[Path, Path]:
        return self.dir / f"{key}.npy", self.dir / f"{key}.json"

    def record(self, key: str) -> dict | None:
        """The stored facts of an entry (``{"info": ...}`` or ``{"error": reason}``), None on a miss."""
        tensor_file, meta_file = self._files(key)
        try:
            meta = json.loads(meta_file.read_text())
        except (OSError, ValueError):
            return None
        if "error" not in meta and not tensor_file.exists():
            return None
        return meta

    def tensor(self, key: str) -> torch.Tensor:
        return torch.from_numpy(np.load(self._files(key)[0]).astype(np.float32))

    def prepare(self, path: str | Path, key: str | None = None) -> tuple[str, dict]:
        """Make sure the study's entry exists; returns (key, record). Refusals are recorded too."""
        path = Path(path).resolve()
        if key is None:
            try:
                key = self.key(path)
            except OSError as exc:  # missing or unreadable files: nothing to cache
                reason = "does not exist" if not path.exists() else f"cannot be read ({exc.strerror or exc})"
                return "", {"error": reason, "where": ""}
        meta = self.record(key)
        if meta is not None:
            return key, meta
        try:
            volume = read_study(path)
            tensor = volume_to_input(volume, self.settings)
        except StudyError as err:
            meta = {"error": err.reason, "where": _relative(err.source, path)}
        except Exception as exc:  # an unforeseen failure: refuse this study now, but do not remember it
            self.decoded += 1
            return key, {"error": f"cannot be preprocessed ({type(exc).__name__}: {describe(exc)})"}
        else:
            meta = {"info": volume.info}
            self.dir.mkdir(parents=True, exist_ok=True)
            tmp = self.dir / f"{key}.{os.getpid()}.tmp.npy"
            np.save(tmp, tensor.numpy().astype(np.float16))  # hits and misses return the same values
            os.replace(tmp, self._files(key)[0])
        self.decoded += 1
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / f"{key}.{os.getpid()}.tmp.json"
        tmp.write_text(json.dumps(meta, default=str))
        os.replace(tmp, self._files(key)[1])
        return key, meta

    def load(self, path: str | Path) -> torch.Tensor:
        """The model input of one study; raises :class:`StudyError` when it is refused."""
        path = Path(path).resolve()
        key, meta = self.prepare(path)
        if "error" in meta:
            raise StudyError(path / meta["where"] if meta.get("where") else path, meta["error"])
        return self.tensor(key)


def _relative(source, study: Path) -> str:
    """Where inside the study a refusal points (a file name), never an absolute path."""
    try:
        rel = Path(source).resolve().relative_to(study)
    except (ValueError, OSError):
        return ""
    return "" if str(rel) == "." else str(rel)
