"""Where a model's outline of an aneurysm stops short of the outer wall: right, left, front or back.

    python bench/shortfall.py --model MODEL --phantoms DIR/phantoms [--real 10]

For each aneurysm of a phantom set rendered by ``bench/generalisation.py`` (``--phantoms``: its ``phantoms``
folder, with ``manifest.csv`` and the labels) and of the real-CT insertions, on the label's largest axial
section of the network input: how far the label reaches from its centroid along the patient's right, left,
front and back, minus how far the network's region (probability >= 0.5) reaches, in mm (0: the outline
reaches the wall; the whole reach: the network missed that section). Prints one row per study and the
medians per set.
"""

from __future__ import annotations

import argparse
import csv
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

from fedaaa.common.model import load_model
from fedaaa.common.preprocess import load_study_input
from fedaaa.common.segment import aorta_probability
from fedaaa.simulations.phantom import real_ct_cases, save_nifti

# RAS voxel axes of the network input (its affine is diagonal and positive): +i is the patient's right, +j the front
DIRECTIONS = {"right": (1, 0), "left": (-1, 0), "front": (0, 1), "back": (0, -1)}


def _reach(mask: np.ndarray, i: int, j: int, di: int, dj: int) -> int:
    """Voxels from (i, j) along (di, dj) before ``mask`` ends."""
    n = 0
    while (
        0 <= i + (n + 1) * di < mask.shape[0]
        and 0 <= j + (n + 1) * dj < mask.shape[1]
        and mask[i + (n + 1) * di, j + (n + 1) * dj]
    ):
        n += 1
    return n


def shortfall(model_file, image: Path, label: Path) -> dict[str, float]:
    """Per direction, label reach minus network reach (mm) on the label's largest axial section."""
    inp = load_study_input(image, model_file.preprocess, mask=label)
    prob = aorta_probability(model_file.model, inp.image, torch.device("cpu"))
    if not (np.diag(inp.affine)[:2] > 0).all():
        raise ValueError(f"{image}: the network input is not on a RAS grid")
    ref = inp.label[0].numpy() > 0
    k = int(np.argmax(ref.sum(axis=(0, 1))))
    ii, jj = np.nonzero(ref[:, :, k])
    i, j = int(round(ii.mean())), int(round(jj.mean()))
    found = prob[:, :, k] >= 0.5
    voxel = abs(float(inp.affine[0, 0]))
    return {name: (_reach(ref[:, :, k], i, j, *d) - _reach(found, i, j, *d)) * voxel for name, d in DIRECTIONS.items()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--phantoms", required=True, help="the phantoms folder that bench/generalisation.py rendered")
    ap.add_argument("--real", type=int, default=10, help="real-CT insertions (0: none)")
    args = ap.parse_args(argv)
    mf = load_model(args.model)
    root = Path(args.phantoms)
    sets: dict[str, list[dict[str, float]]] = {"phantom aneurysms": [], "inserted aneurysms": []}
    print("study | truth mm | " + " | ".join(DIRECTIONS))
    with open(root / "manifest.csv", newline="") as f:
        for m in csv.DictReader(f):
            if m["aaa"] == "1":
                s = shortfall(mf, root / m["path"], root / m["mask"])
                sets["phantom aneurysms"].append(s)
                print(
                    f"{m['study_id']} | {float(m['max_diameter_mm']):.1f} | "
                    + " | ".join(f"{v:.1f}" for v in s.values()),
                    flush=True,
                )
    if args.real:
        with tempfile.TemporaryDirectory() as tmp:
            for case in real_ct_cases(args.real, 0)[1:]:
                image = save_nifti(Path(tmp) / f"{case.name}.nii.gz", case.hu, case.affine)
                label = save_nifti(Path(tmp) / f"{case.name}-label.nii.gz", case.label, case.affine, np.uint8)
                s = shortfall(mf, image, label)
                sets["inserted aneurysms"].append(s)
                print(
                    f"{case.name} | {case.max_diameter_mm:.1f} | " + " | ".join(f"{v:.1f}" for v in s.values()),
                    flush=True,
                )
    print("\n| set | n | " + " | ".join(DIRECTIONS) + " |\n|---|---:|" + "---:|" * len(DIRECTIONS))
    for name, rows in sets.items():
        if rows:
            med = [float(np.median([r[d] for r in rows])) for d in DIRECTIONS]
            print(f"| {name} | {len(rows)} | " + " | ".join(f"{v:.1f} mm" for v in med) + " |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
