"""What DP-SGD costs in accuracy as a hospital grows: one site's studies, trained with and without DP.

    python bench/dp_scale_bench.py --out DIR [--sites 2 --studies-per-site 100] [--epsilons 8,3]
        [--batch-sizes 4,16] [--rounds 10 --local-epochs 2] [--device auto]

Synthetic hospitals are written and pooled into **one** site (so the DP site is as large as all of them),
then trained round by round exactly as a hospital trains in a federation: ``train_local`` without DP,
``train_private`` (the ClientApp's DP path: Poisson sampling, per-study clipping, noise planned for all
rounds, the ledger) with DP at each epsilon and each batch size. After every round the model is
validated on the pooled validation studies (Dice, AUROC, diameter MAE). Prints one JSON line per round
and arm, and the last round of each arm with its seconds per epoch. No Flower: this isolates what DP does
to one site's training; ``fedaaa simulate --compare`` measures it inside a federation.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # noqa: E402 - run from a checkout

import torch  # noqa: E402

from fedaaa.common.cache import InputCache  # noqa: E402
from fedaaa.common.config import PREPROCESS, RunSettings  # noqa: E402
from fedaaa.common.metrics import summarize  # noqa: E402
from fedaaa.common.model import AortaNet  # noqa: E402
from fedaaa.common.privacy import LedgerStore, PrivacySettings, train_private  # noqa: E402
from fedaaa.common.site import Site, StudySet  # noqa: E402
from fedaaa.common.training import evaluate_local, pick_device, train_local  # noqa: E402
from fedaaa.simulations.synth import default_sites, write_federation  # noqa: E402


def pooled(sets: list[StudySet | None]) -> StudySet:
    kept = [s for s in sets if s is not None]
    out = StudySet(kept[0].spacing_mm)
    for s in kept:
        for i in range(len(s)):
            out.add(s.images[i], s.labels[i], s.aaa[i], s.diameters[i])
    return out


def run_arm(
    name: str,
    train: StudySet,
    val: StudySet,
    run: RunSettings,
    device: torch.device,
    privacy: PrivacySettings | None,
    state: Path,
) -> dict:
    torch.manual_seed(run.seed)
    model = AortaNet().to(device)
    train_s, entry = 0.0, {}
    for k in range(1, run.num_server_rounds + 1):
        settings = run.train_settings(k)
        t = time.perf_counter()
        if privacy is None:
            stats = train_local(model, train, settings, device)
            spent = None
        else:
            stats, outcome = train_private(
                model, train, settings, device, privacy, LedgerStore(state), name, k, run.num_server_rounds
            )
            spent = round(outcome.epsilon, 3)
        train_s += time.perf_counter() - t
        s = summarize(evaluate_local(model, val, device))
        entry = {"arm": name, "round": k, "loss": round(stats["train-loss"], 4), "epsilon": spent}
        entry |= {key: round(float(s[key]), 4) for key in ("dice", "auroc", "diameter_mae_mm", "unmeasured")}
        entry["train_s_per_epoch"] = round(train_s / (k * settings.local_epochs), 2)
        print(json.dumps(entry), flush=True)
    return entry


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--sites", type=int, default=2)
    ap.add_argument("--studies-per-site", type=int, default=100)
    ap.add_argument("--epsilons", default="8,3")
    ap.add_argument("--batch-sizes", default="4,16", help="DP arms: one arm per batch size and epsilon")
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--local-epochs", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    out = Path(args.out)
    device = pick_device(args.device)
    t0 = time.perf_counter()
    specs = default_sites(args.sites, args.studies_per_site, seed=args.seed)
    with ProcessPoolExecutor(min(len(specs), os.cpu_count() or 1)) as pool:  # one process per hospital
        list(pool.map(write_federation, [out / "data"] * len(specs), [[s] for s in specs]))
    sites = write_federation(out / "data", specs)  # written above: only read back
    cache = InputCache(PREPROCESS, out / "data" / ".cache")
    train = pooled([Site(s).load("train", PREPROCESS, cache, workers=None).data for s in sites])
    val = pooled([Site(s).load("val", PREPROCESS, cache, workers=None).data for s in sites])
    name = torch.cuda.get_device_name() if device.type == "cuda" else "CPU"
    print(
        f"# {device} ({name}): {len(train.masked)} labelled training studies, {len(val)} validation studies, "
        f"data in {time.perf_counter() - t0:.0f} s",
        flush=True,
    )
    run = RunSettings(num_server_rounds=args.rounds, local_epochs=args.local_epochs, seed=args.seed)
    last = [run_arm("no DP, batch 4", train, val, run, device, None, out)]
    with tempfile.TemporaryDirectory() as state:
        for eps in (float(e) for e in args.epsilons.split(",")):
            for b in (int(x) for x in args.batch_sizes.split(",")):
                arm = f"DP eps {eps:g}, batch {b}"
                last.append(
                    run_arm(
                        arm, train, val, run.with_overrides(batch_size=b), device, PrivacySettings(eps), Path(state)
                    )
                )
    print("# last round of each arm")
    for entry in last:
        print(json.dumps(entry))


if __name__ == "__main__":
    main()
