"""Generalisation benchmark: a model on studies it was never trained on, drawn by an independent renderer.

    python bench/generalisation.py --model runs/demo/global_model.safetensors --out /tmp/gen-bench [--n 48]

Renders the evaluation phantom set (``fedaaa.simulations.phantom``: its own shape model and intensities,
written apart from the training generator) as NIfTI into ``--out`` and the real-CT cases (aneurysms
inserted into the real aorta of ``../shared/data/real-ct/example_ct.nii.gz``, plus the unmodified scan),
answers each study as ``fedaaa predict --json`` does (``predict_study``), and prints a Markdown table per
set and per subgroup: n, sensitivity, specificity, diameter MAE, bias, 95% limits of agreement. The table
and the per-study answers (``results.csv``) are written into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from fedaaa.common.model import load_model
from fedaaa.common.predict import predict_study
from fedaaa.simulations.phantom import REAL_CT_DIR, phantom_set, real_ct_cases, save_nifti, write_phantom_set


def summarise(rows: list[dict]) -> dict[str, float]:
    truth = np.array([r["aaa"] for r in rows], bool)
    pred = np.array([r["pred_aaa"] for r in rows], bool)
    err = np.array([r["pred_d"] - r["true_d"] for r in rows], float)
    unmeasured = int((~np.isfinite(err)).sum())
    err = err[np.isfinite(err)]
    pos, neg = truth.sum(), (~truth).sum()
    sd = float(err.std(ddof=1)) if len(err) > 1 else float("nan")
    return {
        "n": len(rows),
        "aaa": int(pos),
        "unmeasured": unmeasured,
        "sens": float((pred & truth).sum() / pos) if pos else float("nan"),
        "spec": float((~pred & ~truth).sum() / neg) if neg else float("nan"),
        "mae": float(np.abs(err).mean()) if len(err) else float("nan"),
        "bias": float(err.mean()) if len(err) else float("nan"),
        "loa": (float(err.mean() - 1.96 * sd), float(err.mean() + 1.96 * sd)),
    }


def fmt(x: float, nd: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def table(groups: list[tuple[str, list[dict]]]) -> str:
    lines = [
        "| set | n | AAA | not measurable | sensitivity | specificity | diameter MAE, mm | bias, mm "
        "| 95% limits of agreement, mm |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, rows in groups:
        if not rows:
            continue
        s = summarise(rows)
        loa = f"{fmt(s['loa'][0], 1)} .. {fmt(s['loa'][1], 1)}"
        lines.append(
            f"| {name} | {s['n']} | {s['aaa']} | {s['unmeasured']} | {fmt(s['sens'])} | {fmt(s['spec'])} "
            f"| {fmt(s['mae'], 1)} "
            f"| {fmt(s['bias'], 1)} | {loa} |"
        )
    return "\n".join(lines)


def answer(mf, path: Path) -> tuple[bool, float, float]:
    """(called AAA, probability, diameter); an aorta not measurable is not called AAA and has no diameter."""
    out = predict_study(mf, path)
    if "error" in out:
        raise RuntimeError(out["error"])
    if not out["measurable"]:
        print(f"{path.name}: not measurable: {out['reason']}", file=sys.stderr)
        return False, 0.0, float("nan")
    return bool(out["aaa_present"]), float(out["aaa_probability"]), float(out["max_diameter_mm"])


def real_ct_dice(mf) -> dict[str, float]:
    """Dice of the network's aorta (probability >= 0.5, mapped back onto the scan's 3 mm grid) against the
    reference label 52 on the labelled slices of the real CT, and the reference's own extent there."""
    from scipy import ndimage

    from fedaaa.common.preprocess import load_study_input
    from fedaaa.common.segment import aorta_probability
    from fedaaa.common.training import pick_device
    from fedaaa.simulations.phantom import load_real_ct

    hu, affine, label = load_real_ct(REAL_CT_DIR)
    loaded = load_study_input(REAL_CT_DIR / "example_ct.nii.gz", mf.preprocess)
    prob = aorta_probability(mf.model, loaded.image, pick_device())
    ijk = np.indices(hu.shape).reshape(3, -1)
    world = affine @ np.vstack([ijk, np.ones(ijk.shape[1])])
    vox = np.linalg.solve(loaded.affine, world)[:3]
    mapped = ndimage.map_coordinates(prob, vox, order=1, cval=0.0).reshape(hu.shape) >= 0.5
    zs = np.nonzero(label.any(axis=(0, 1)))[0]
    pred, ref = mapped[:, :, zs], label[:, :, zs] > 0
    dice = 2 * (pred & ref).sum() / max(pred.sum() + ref.sum(), 1)
    return {"dice": float(dice), "slices": int(len(zs)), "pred_voxels": int(pred.sum()), "ref_voxels": int(ref.sum())}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", default=None, help="folder for the rendered set and the results (default: temporary)")
    ap.add_argument("--n", type=int, default=48, help="phantom studies (default 48)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--real", type=int, default=10, help="real-CT insertions (0: none)")
    ap.add_argument("--matrix", type=int, default=448)
    ap.add_argument("--spacing", type=float, nargs=3, default=(0.8, 0.8, 2.5))
    args = ap.parse_args(argv)

    mf = load_model(args.model)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="gen-bench-"))
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    t0 = time.perf_counter()

    specs = phantom_set(args.n, args.seed)
    phantoms = out / "phantoms"
    if not (phantoms / "truth.csv").exists():
        write_phantom_set(
            phantoms,
            specs,
            progress=lambda i, n, spec, ph: print(
                f"rendered {i}/{n} {spec.kind} {ph.max_diameter_mm:.1f} mm", file=sys.stderr
            ),
            spacing=tuple(args.spacing),
            matrix=args.matrix,
        )
    with open(phantoms / "manifest.csv") as fm, open(phantoms / "truth.csv") as ft:
        for m, t in zip(csv.DictReader(fm), csv.DictReader(ft)):
            pred_aaa, prob, d = answer(mf, phantoms / m["path"])
            rows.append(
                {
                    "set": "phantom", "study_id": m["study_id"], "kind": t["kind"], "contrast": t["contrast"] == "1",
                    "thrombus_fraction": float(t["thrombus_fraction"]), "aaa": m["aaa"] == "1",
                    "true_d": float(t["max_diameter_mm"]), "lumen_d": float(t["lumen_diameter_mm"]),
                    "pred_aaa": pred_aaa, "prob": prob, "pred_d": d,
                }
            )  # fmt: skip
    print(f"phantoms answered in {time.perf_counter() - t0:.0f} s", file=sys.stderr)

    if args.real and (REAL_CT_DIR / "example_ct.nii.gz").exists():
        real = out / "real-ct"
        real.mkdir(exist_ok=True)
        for case in real_ct_cases(args.real, args.seed):
            path = save_nifti(real / f"{case.name}.nii.gz", case.hu, case.affine)
            pred_aaa, prob, d = answer(mf, path)
            rows.append(
                {
                    "set": "real-ct", "study_id": case.name, "kind": "aneurysm" if case.aaa else "normal",
                    "contrast": False, "thrombus_fraction": case.thrombus_fraction, "aaa": case.aaa,
                    "true_d": case.max_diameter_mm, "lumen_d": float("nan"), "pred_aaa": pred_aaa, "prob": prob,
                    "pred_d": d,
                }
            )  # fmt: skip
        dice = real_ct_dice(mf)
        print(f"real CT aorta Dice against label 52: {dice}", file=sys.stderr)
    elif args.real:
        dice = None
        print(f"real CT not found under {REAL_CT_DIR}: real-CT cases skipped", file=sys.stderr)
    else:
        dice = None

    if not rows:
        print("nothing was evaluated", file=sys.stderr)
        return 1
    ph = [r for r in rows if r["set"] == "phantom"]
    heavy = [r for r in ph if r["thrombus_fraction"] >= 0.5]
    groups = [
        ("phantoms, all", ph),
        ("phantoms, contrast", [r for r in ph if r["contrast"]]),
        ("phantoms, non-contrast", [r for r in ph if not r["contrast"]]),
        ("phantoms, thrombus-heavy (>= 0.5)", heavy),
        ("phantoms, little thrombus (< 0.5)", [r for r in ph if r["thrombus_fraction"] < 0.5]),
        ("phantoms, aneurysms only", [r for r in ph if r["aaa"]]),
        ("phantoms, normal + ectatic only", [r for r in ph if not r["aaa"]]),
        ("real CT, inserted aneurysms + unmodified", [r for r in rows if r["set"] == "real-ct"]),
    ]
    md = table(groups)
    if dice is not None:
        md += (
            f"\n\nReal CT aorta Dice against TotalSegmentator's label 52 on its {dice['slices']} labelled slices "
            f"(3 mm grid): {dice['dice']:.3f}."
        )
    real_rows = {r["study_id"]: r for r in rows if r["set"] == "real-ct"}
    if "real-unmodified" in real_rows:
        r = real_rows["real-unmodified"]
        said = (
            "not measurable"
            if np.isnan(r["pred_d"])
            else f"called {'AAA' if r['pred_aaa'] else 'no AAA'}, {r['pred_d']:.1f} mm"
        )
        md += f"\nUnmodified real CT: {said} (reference {r['true_d']:.1f} mm)."
    aaa_heavy = [r for r in heavy if r["aaa"]]
    if aaa_heavy:
        lumen_err = np.nanmean([abs(r["pred_d"] - r["lumen_d"]) for r in aaa_heavy])
        outer_err = np.nanmean([abs(r["pred_d"] - r["true_d"]) for r in aaa_heavy])
        md += (
            f"\n\nThrombus-heavy aneurysms: mean |prediction - lumen diameter| {lumen_err:.1f} mm, "
            f"|prediction - outer diameter| {outer_err:.1f} mm."
        )
    print(md)
    (out / "generalisation.md").write_text(md + "\n")
    with open(out / "results.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    print(f"written {out / 'generalisation.md'} and results.csv ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
