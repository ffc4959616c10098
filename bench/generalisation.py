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
    pos, neg = truth.sum(), (~truth).sum()
    sd = float(err.std(ddof=1)) if len(err) > 1 else float("nan")
    return {
        "n": len(rows),
        "aaa": int(pos),
        "sens": float((pred & truth).sum() / pos) if pos else float("nan"),
        "spec": float((~pred & ~truth).sum() / neg) if neg else float("nan"),
        "mae": float(np.abs(err).mean()),
        "bias": float(err.mean()),
        "loa": (float(err.mean() - 1.96 * sd), float(err.mean() + 1.96 * sd)),
    }


def fmt(x: float, nd: int = 2) -> str:
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{nd}f}"


def table(groups: list[tuple[str, list[dict]]]) -> str:
    lines = [
        "| set | n | AAA | sensitivity | specificity | diameter MAE, mm | bias, mm | 95% limits of agreement, mm |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, rows in groups:
        if not rows:
            continue
        s = summarise(rows)
        loa = f"{fmt(s['loa'][0], 1)} .. {fmt(s['loa'][1], 1)}"
        lines.append(
            f"| {name} | {s['n']} | {s['aaa']} | {fmt(s['sens'])} | {fmt(s['spec'])} | {fmt(s['mae'], 1)} "
            f"| {fmt(s['bias'], 1)} | {loa} |"
        )
    return "\n".join(lines)


def answer(mf, path: Path) -> tuple[bool, float, float]:
    out = predict_study(mf, path)
    if "error" in out:
        raise RuntimeError(out["error"])
    return bool(out["aaa_present"]), float(out["aaa_probability"]), float(out["max_diameter_mm"])


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
    elif args.real:
        print(f"real CT not found under {REAL_CT_DIR}: real-CT cases skipped", file=sys.stderr)

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
    aaa_heavy = [r for r in heavy if r["aaa"]]
    if aaa_heavy:
        lumen_err = np.mean([abs(r["pred_d"] - r["lumen_d"]) for r in aaa_heavy])
        outer_err = np.mean([abs(r["pred_d"] - r["true_d"]) for r in aaa_heavy])
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
