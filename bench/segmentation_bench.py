"""Pooled training of the segmentation network on synthetic hospitals, then every evaluation of issue 8.

    python bench/segmentation_bench.py --out /tmp/seg-bench [--sites 4 --studies-per-site 60 --epochs 40]

Writes the synthetic hospitals (the same generator and site profiles as ``fedaaa simulate``), trains the
network on all hospitals' training splits together (pooled: the upper bound a federation tries to reach;
``fedaaa simulate`` trains the same network by FedAvg), calibrates the probability and chooses the threshold
on the validation splits, then reports:

- the held-out test splits (AUROC, sensitivity and specificity at the stored threshold, diameter MAE, bias,
  95% limits of agreement, ECE, Dice), with a Bland-Altman and reliability plot;
- the independent renderer and the real CT (``bench/generalisation.py``), and the aorta Dice against the
  real CT's reference label.

``--device cuda`` (or ``auto``) trains on a GPU; every figure is printed and written to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from generalisation import main as generalisation_main  # noqa: E402

from fedaaa.common.cache import InputCache  # noqa: E402
from fedaaa.common.calibration import calibrate  # noqa: E402
from fedaaa.common.config import PREPROCESS  # noqa: E402
from fedaaa.common.metrics import evaluation_stats, sum_stats, summarize  # noqa: E402
from fedaaa.common.model import AortaNet, ModelFile, save_model  # noqa: E402
from fedaaa.common.settings import ArchSettings, TrainSettings  # noqa: E402
from fedaaa.common.site import Site, StudySet  # noqa: E402
from fedaaa.common.training import evaluate_local, pick_device, predict_set, train_local  # noqa: E402
from fedaaa.simulations.simulate import plot_test, test_global_model  # noqa: E402
from fedaaa.simulations.synth import default_sites, write_federation  # noqa: E402


def pooled(sets: list[StudySet]) -> StudySet:
    out = StudySet(sets[0].spacing_mm)
    for s in sets:
        for i in range(len(s)):
            out.add(s.images[i], s.labels[i], s.aaa[i], s.diameters[i])
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--studies-per-site", type=int, default=60)
    ap.add_argument("--matrix", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--learning-rate", type=float, default=3e-3)
    ap.add_argument("--patches", type=int, default=4)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--res-units", type=int, default=ArchSettings().res_units, help="residual units per U-Net stage")
    ap.add_argument("--channels", type=int, nargs="+", default=ArchSettings().channels, help="U-Net stage channels")
    ap.add_argument("--patch-size", type=int, nargs=3, default=ArchSettings().patch_size, help="training patch, voxels")
    ap.add_argument("--train-budget-s", type=float, default=None, help="stop training after this many seconds")
    ap.add_argument("--workers", type=int, default=None)
    ap.add_argument("--gen-n", type=int, default=48, help="independent-renderer studies (0: skip)")
    ap.add_argument("--real", type=int, default=10, help="aneurysms inserted into the real CT")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    device = pick_device(args.device)
    print(f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'CPU'})", flush=True)
    specs = default_sites(args.sites, args.studies_per_site, seed=args.seed, matrix=args.matrix)
    with ProcessPoolExecutor(min(len(specs), os.cpu_count() or 1)) as pool:  # one process per hospital
        list(pool.map(write_federation, [out / "data"] * len(specs), [[s] for s in specs]))
    sites = write_federation(out / "data", specs)  # written above: only read back
    cache = InputCache(PREPROCESS, out / "data" / ".cache")
    splits = {}
    for name in ("train", "val"):
        parts = [Site(s).load(name, PREPROCESS, cache, workers=args.workers) for s in sites]
        splits[name] = pooled([p.data for p in parts if p.data is not None])
    train, val = splits["train"], splits["val"]
    print(
        f"data ready in {time.perf_counter() - t0:.0f} s: {len(train)} train ({len(train.masked)} labelled), {len(val)} val",
        flush=True,
    )
    torch.manual_seed(args.seed)
    arch = replace(
        ArchSettings(), res_units=args.res_units, channels=tuple(args.channels), patch_size=tuple(args.patch_size)
    )
    model = AortaNet(arch)
    log = []
    t_train = time.perf_counter()
    for epoch in range(1, args.epochs + 1):
        if args.train_budget_s and time.perf_counter() - t_train > args.train_budget_s:
            print(f"training stopped by its time budget after {epoch - 1} epochs", flush=True)
            break
        t = time.perf_counter()
        settings = TrainSettings(
            local_epochs=1,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate * (0.5 * (1 + np.cos(np.pi * (epoch - 1) / args.epochs))),
            patches_per_study=args.patches,
            seed=args.seed * 1000 + epoch,
        )
        stats = train_local(model, train, settings, device)
        entry = {"epoch": epoch, "loss": stats["train-loss"], "train_s": round(time.perf_counter() - t, 2)}
        if epoch % 5 == 0 or epoch == args.epochs:
            t = time.perf_counter()
            s = summarize(evaluate_local(model, val, device))
            entry |= {k: s[k] for k in ("dice", "auroc", "diameter_mae_mm", "diameter_bias_mm", "unmeasured")}
            entry["val_s"] = round(time.perf_counter() - t, 2)
        log.append(entry)
        print(json.dumps(entry), flush=True)
    rows = predict_set(model, val, device)
    stats = sum_stats(
        [evaluation_stats(np.array([r["diameter"] for r in rows], float), np.array(val.aaa), np.array(val.diameters))]
    )
    cal, threshold = calibrate(stats["hist-pos"], stats["hist-neg"])
    model_path = save_model(
        out / "pooled_model.safetensors",
        ModelFile(
            model.cpu(),
            PREPROCESS,
            threshold=threshold,
            round=args.epochs,
            calibration=cal,
            summary={"pooled_epochs": args.epochs},
        ),
    )
    test, arrays = test_global_model(model_path, sites, cache)
    plot_test(arrays, test, out / "test_agreement.png")
    result = {"device": str(device), "epochs": log, "test": test, "elapsed_s": round(time.perf_counter() - t0)}
    (out / "segmentation_bench.json").write_text(json.dumps(result, indent=2, default=float))
    print("TEST", json.dumps(test, default=float), flush=True)
    if args.gen_n or args.real:
        generalisation_main(
            ["--model", str(model_path), "--out", str(out / "gen"), "--n", str(args.gen_n), "--real", str(args.real)]
        )
    print(f"total {time.perf_counter() - t0:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
