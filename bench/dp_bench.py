"""What DP-SGD costs in time: one local epoch with and without DP, same network, same studies, same patches.

    python bench/dp_bench.py [--studies 24] [--repeats 3] [--epochs 3] [--device cpu]

Both epochs draw one augmented patch per labelled training study (the non-DP epoch with
``patches_per_study=1``; the DP epoch by Poisson sampling, so about one per study) at the run's batch size,
and include the augmentation, which both pay. The DP rounds run exactly what a DP hospital runs
(:func:`fedaaa.common.privacy.train_private`, with a throw-away ledger, its accounting included); each
timed round has ``--epochs`` local epochs, after a first DP round that also plans the noise for the run
(timed apart: a site pays it once). Prints seconds per epoch (median of the repeats) and the ratio.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # noqa: E402 - run from a checkout

import torch  # noqa: E402

from fedaaa.common.cache import InputCache  # noqa: E402
from fedaaa.common.config import PREPROCESS  # noqa: E402
from fedaaa.common.model import AortaNet  # noqa: E402
from fedaaa.common.privacy import LedgerStore, PrivacySettings, train_private  # noqa: E402
from fedaaa.common.settings import TrainSettings  # noqa: E402
from fedaaa.common.site import Site  # noqa: E402
from fedaaa.common.training import train_local  # noqa: E402
from fedaaa.simulations.synth import default_sites, write_federation  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--studies", type=int, default=24, help="studies in the synthetic site (default 24)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=3, help="local epochs per timed round (default 3)")
    args = parser.parse_args()
    device = torch.device(args.device)
    with tempfile.TemporaryDirectory() as tmp:
        (site,) = write_federation(Path(tmp), default_sites(1, args.studies, seed=3))
        data = Site(site).load("train", PREPROCESS, InputCache(PREPROCESS, Path(tmp) / "cache")).data
        settings = TrainSettings(local_epochs=args.epochs, batch_size=args.batch_size, patches_per_study=1)
        n = len(data.masked)
        model = AortaNet()
        store, privacy, rounds = LedgerStore(Path(tmp) / "state"), PrivacySettings(8.0), args.repeats + 1
        train_local(model, data, settings, device)  # warm-up: allocator, kernels, first-touch of the inputs
        t0 = time.perf_counter()  # the site's first DP round also plans the noise for the run (once)
        train_private(model, data, settings, device, privacy, store, "bench", 1, rounds)
        first = time.perf_counter() - t0
        plain, private = [], []
        for r in range(2, rounds + 1):
            t0 = time.perf_counter()
            train_local(model, data, settings, device)
            plain.append((time.perf_counter() - t0) / args.epochs)
            t0 = time.perf_counter()
            train_private(model, data, settings, device, privacy, store, "bench", r, rounds)
            private.append((time.perf_counter() - t0) / args.epochs)
        result = {
            "device": str(device),
            "threads": torch.get_num_threads(),
            "training_studies": n,
            "batch_size": args.batch_size,
            "epochs_per_round": args.epochs,
            "dp_first_round_s (plans the noise)": round(first, 2),
            "plain_s_per_epoch": round(statistics.median(plain), 2),
            "dp_s_per_epoch": round(statistics.median(private), 2),
            "ratio": round(statistics.median(private) / statistics.median(plain), 2),
            "plain_runs_s": [round(t, 2) for t in plain],
            "dp_runs_s": [round(t, 2) for t in private],
        }
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
