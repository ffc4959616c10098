"""Model input: one MONAI pipeline, the same at training and at prediction, cached on disk."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import (
    BorderPad,
    Compose,
    MapTransform,
    Orientationd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialCrop,
)

from fedaaa.common.errors import StudyError, describe
from fedaaa.common.io import CTVolume, StudyInfo, read_study
from fedaaa.common.io.nifti import read_label
from fedaaa.common.io.volume import canonical_grid
from fedaaa.common.settings import PreprocessSettings  # defined there: light to import

BODY_LEVEL = 0.02  # scaled intensity above which a voxel is body (fat and denser), not air
# At most this many voxels on the input grid before cropping: 2 m of a 700 mm field of view at
# 2.5 x 2.5 x 5 mm is 31 million. Beyond it the geometry is absurd and the resampler would exhaust memory.
MAX_RESAMPLED_VOXELS = 48_000_000


class CropAroundBodyd(MapTransform):
    """Crop every key to the same box: ``roi_size[:2]`` in-plane, centred on the body (found in the first
    key, the image), and along z the whole scanned range, or its central ``roi_size[2]`` slices when longer.

    The abdominal aorta lies just anterior to the spine near the body's in-plane centre, so a box around
    the body centroid holds it whatever the scanner's field of view or table position. Parts of the box
    outside the scan are filled with 0 (the air level after scaling, no aorta in a label).
    """

    def __init__(self, keys: str | Sequence[str], roi_size: Sequence[int]) -> None:
        super().__init__(keys)
        self.roi_size = [int(v) for v in roi_size]

    def __call__(self, data: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        d = dict(data)
        img = d[self.keys[0]]
        arr = img[0].detach().cpu().numpy() if isinstance(img, torch.Tensor) else img[0]
        body = arr > BODY_LEVEL
        center = (np.asarray(arr.shape[:2], dtype=float) - 1) / 2.0
        if body.any():
            ii, jj = np.nonzero(body.any(axis=2))
            center = np.array([ii.mean(), jj.mean()])
        rx, ry, rz = self.roi_size
        nz = arr.shape[2]
        z0 = max(0, (nz - rz) // 2)
        pad = [(rx + 1) // 2, (ry + 1) // 2]
        start = [int(round(c)) + p - r // 2 for c, p, r in zip(center, pad, (rx, ry))]
        for key in self.keys:
            padded = BorderPad(spatial_border=[pad[0], pad[0], pad[1], pad[1], 0, 0])(d[key])
            d[key] = SpatialCrop(roi_start=[*start, z0], roi_end=[start[0] + rx, start[1] + ry, z0 + min(nz, rz)])(
                padded
            )
        return d


@dataclass
class StudyInput:
    """A study as the network sees it: ``image`` (1, X, Y, Z) in [0, 1], its aorta ``label`` (same shape,
    0/1; None without a mask), the voxel -> RAS mm ``affine`` of that grid, and the study's facts."""

    image: torch.Tensor
    label: torch.Tensor | None
    affine: np.ndarray
    info: StudyInfo


def build_transform(settings: PreprocessSettings, with_label: bool = False) -> Compose:
    lo, hi = settings.hu_window
    keys = ["image", "label"] if with_label else ["image"]
    modes = ["bilinear", "bilinear"] if with_label else ["bilinear"]
    return Compose(
        [
            Orientationd(keys=keys, axcodes="RAS", labels=(("L", "R"), ("P", "A"), ("I", "S"))),
            ScaleIntensityRanged(keys="image", a_min=lo, a_max=hi, b_min=0.0, b_max=1.0, clip=True),
            Spacingd(keys=keys, pixdim=settings.spacing_mm, mode=modes, padding_mode="zeros"),
            CropAroundBodyd(keys=keys, roi_size=settings.roi_size),
        ]
    )


def preprocess_volume(volume: CTVolume, settings: PreprocessSettings, label: np.ndarray | None = None) -> StudyInput:
    """A CT volume (and its label on the same grid) to the network's grid and intensities."""
    affine = torch.from_numpy(np.asarray(volume.affine, dtype=np.float64))
    data = {"image": MetaTensor(torch.from_numpy(np.ascontiguousarray(volume.hu[None])), affine=affine)}
    if label is not None:
        data["label"] = MetaTensor(torch.from_numpy(np.ascontiguousarray(label[None], dtype=np.float32)), affine=affine)
    out = build_transform(settings, label is not None)(data)
    image = out["image"]
    out_affine = np.asarray(image.affine, dtype=float)
    lab = None
    if label is not None:
        lab = (out["label"].as_tensor() >= 0.5).to(torch.float32)
    return StudyInput(image.as_tensor().to(torch.float32), lab, out_affine, volume.info)


def volume_to_input(volume: CTVolume, settings: PreprocessSettings) -> torch.Tensor:
    """A CT volume to the network input, shape (1, X, Y, Z), intensities in [0, 1]."""
    return preprocess_volume(volume, settings).image


def check_grid(
    source: str | Path, shape: tuple[int, ...], spacing: tuple[float, ...], settings: PreprocessSettings
) -> None:
    """Refuse a canonical grid (shape, voxel size in mm) whose resampling to the input spacing would exceed
    :data:`MAX_RESAMPLED_VOXELS` (an absurd PixelSpacing or NIfTI zoom would make the resampler ask for
    gigabytes or terabytes)."""
    with np.errstate(all="ignore"):
        extent = np.asarray(shape, dtype=float) * np.asarray(spacing, dtype=float)
        voxels = float(np.prod(np.ceil(extent / np.asarray(settings.spacing_mm, dtype=float))))
    if not np.isfinite(voxels) or voxels > MAX_RESAMPLED_VOXELS:
        size = " x ".join(f"{e:.0f}" for e in extent)
        raise StudyError(source, f"a field of view of {size} mm is not a CT study: check the voxel size (PixelSpacing)")


def check_input_grid(source: str | Path, volume: CTVolume, settings: PreprocessSettings) -> None:
    """Refuse, before any resampling, a volume whose grid at the input spacing would exceed
    :data:`MAX_RESAMPLED_VOXELS`. :func:`load_study` already applies the same check to the headers' grid
    before any pixel is decoded (:func:`check_grid`); this is the last guard before the resampler."""
    check_grid(source, volume.hu.shape, volume.spacing, settings)


class UnforeseenFailure(StudyError):
    """A failure no check foresaw (a library's odd exception, memory): the study is refused now, but the
    refusal is not remembered in the cache (another try may succeed)."""


def load_study_input(path: str | Path, settings: PreprocessSettings, mask: str | Path | None = None) -> StudyInput:
    """The one road from a study (and its aorta label, if any) to the network: read, check, preprocess.

    Every failure of reading or preprocessing raises :class:`StudyError` with a one-line reason
    (:class:`UnforeseenFailure` for the unexpected ones), never anything else. Training and evaluation
    (through :class:`InputCache`), ``fedaaa predict`` (uncached) and ``fedaaa site check`` all load studies
    here. A label that cannot be read or lies on another grid refuses the study's label in its own sentence
    (raised as a :class:`StudyError` naming the label file)."""
    path = Path(path)
    try:
        volume = read_study(path, lambda shape, affine: check_grid(path, *canonical_grid(shape, affine), settings))
        check_input_grid(path, volume, settings)
        label = None if mask is None else read_label(Path(mask), volume.hu.shape, volume.affine)
        return preprocess_volume(volume, settings, label)
    except StudyError:
        raise
    except MemoryError as exc:
        raise UnforeseenFailure(path, "the study is too large to preprocess in memory") from exc
    except Exception as exc:  # MONAI, torch or numpy on a volume no check foresaw
        raise UnforeseenFailure(path, f"cannot be preprocessed ({type(exc).__name__}: {describe(exc)})") from exc


def load_study(path: str | Path, settings: PreprocessSettings) -> tuple[torch.Tensor, StudyInfo]:
    """:func:`load_study_input` without a label: the input tensor (1, X, Y, Z) and the study's facts."""
    loaded = load_study_input(path, settings)
    return loaded.image, loaded.info
