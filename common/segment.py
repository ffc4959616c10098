"""From a study's network input to its measurement: the aorta probability map (sliding-window inference
of the U-Net over the whole scanned range), the abdominal levels, and the measurement across the centreline."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from fedaaa.common.measure import Measurement, measure_aorta
from fedaaa.common.model import AortaNet

AIR_LEVEL = 0.005  # scaled intensity below which a voxel is air or lung (about -147 HU in the default window)
THORAX_AIR_SHARE = 0.3  # a slice whose central box is this much air is at the lungs' level, not the abdomen's


@torch.no_grad()
def aorta_probability(model: AortaNet, image: torch.Tensor, device: torch.device) -> np.ndarray:
    """Per-voxel aorta probability (X, Y, Z) of one input (1, X, Y, Z), by overlapping patches."""
    model.to(device).eval()
    x = image[None].to(device)
    logits = sliding_window_inference(
        x, roi_size=tuple(model.arch.patch_size), sw_batch_size=4, predictor=model, overlap=0.25, mode="gaussian"
    )
    return torch.sigmoid(logits)[0, 0].float().cpu().numpy()


def abdominal_levels(image: np.ndarray) -> np.ndarray:
    """True for each axial slice of an input (X, Y, Z) below the lungs: one whose central in-plane box
    (the input's box is centred on the body) is mostly soft tissue, not air. The thoracic aorta, in
    slices at the lungs' level, is not measured as abdominal."""
    air = np.asarray(image) < AIR_LEVEL
    return air.mean(axis=(0, 1)) < THORAX_AIR_SHARE


NO_ABDOMEN = "the scan shows no abdominal level (lungs in every slice): the abdominal aorta is not in the scanned range"


def measure_input(
    model: AortaNet, image: torch.Tensor, affine: np.ndarray, device: torch.device
) -> tuple[np.ndarray, Measurement]:
    """The probability map of one input and the measurement of the aorta it shows (abdominal levels only)."""
    prob = aorta_probability(model, image, device)
    return prob, measure_levels(prob, affine, abdominal_levels(image[0].numpy()))


def measure_levels(prob: np.ndarray, affine: np.ndarray, levels: np.ndarray) -> Measurement:
    """The measurement of the aorta in a probability map at the input's abdominal ``levels`` (none: not
    measurable, the abdomen is not in the scanned range)."""
    m = measure_aorta(prob, affine, valid_z=levels)
    if not levels.any():
        m = replace(m, measurable=False, max_diameter_mm=None, max_section=None, reason=NO_ABDOMEN)
    return m
