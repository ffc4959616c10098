"""Model input: one MONAI pipeline, the same at training and at prediction, cached on disk."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
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

from fedaaa.common.errors import StudyError, describe
from fedaaa.common.io import CTVolume, StudyInfo, read_study
from fedaaa.common.io.volume import canonical_grid
from fedaaa.common.settings import PreprocessSettings  # defined there: light to import

BODY_LEVEL = 0.02  # scaled intensity above which a voxel is body (fat and denser), not air
# At most this many voxels on the input grid before cropping: 2 m of a 700 mm field of view at
# 2.5 x 2.5 x 5 mm is 31 million. Beyond it the geometry is absurd and the resampler would exhaust memory.
MAX_RESAMPLED_VOXELS = 48_000_000


class CropAroundBodyd(MapTransform):
    """Crop a fixed-size box centred on the body in-plane and on the scanned range along z.

    The abdominal aorta lies just anterior to the spine near the body's in-plane centre, so a box
    around the body centroid holds it whatever the scanner's field of view or table position.
    Parts of the box outside the scan are filled with the air level (0 after scaling).
    """

    def __init__(self, keys: str | Sequence[str], roi_size: Sequence[int]) -> None:
        super().__init__(keys)
        self.roi_size = np.asarray(roi_size)

    def __call__(self, data: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
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


def load_study(path: str | Path, settings: PreprocessSettings) -> tuple[torch.Tensor, StudyInfo]:
    """The one road from a study to the network input: read, check, preprocess.

    Returns the input tensor (1, *roi_size) and the study's facts. Every failure of reading or
    preprocessing raises :class:`StudyError` with a one-line reason (:class:`UnforeseenFailure` for the
    unexpected ones), never anything else. Training and evaluation (through :class:`InputCache`),
    ``fedaaa predict`` (uncached) and ``fedaaa site check`` all load studies here.
    """
    path = Path(path)
    try:
        volume = read_study(path, lambda shape, affine: check_grid(path, *canonical_grid(shape, affine), settings))
        check_input_grid(path, volume, settings)
        return volume_to_input(volume, settings), volume.info
    except StudyError:
        raise
    except MemoryError as exc:
        raise UnforeseenFailure(path, "the study is too large to preprocess in memory") from exc
    except Exception as exc:  # MONAI, torch or numpy on a volume no check foresaw
        raise UnforeseenFailure(path, f"cannot be preprocessed ({type(exc).__name__}: {describe(exc)})") from exc
