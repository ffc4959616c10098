"""Every arm of a ``fedaaa simulate --compare`` run on a larger test than its hospitals' test splits.

    python bench/external_test.py --compare DIR/compare --work /tmp/external-test [--seed 7] [--sites 3]
                                  [--studies-per-site 40] [--model NAME=MODEL_FILE ...]

The comparison's own test (the hospitals' held-out test splits) is small: with 17 studies one aneurysm
answered "not measurable" moves AUROC by 0.14. This writes a second synthetic federation with another seed
(other hospitals and patients of the same generator, none seen by any arm), takes all its studies (train,
validation and test splits alike), and evaluates each arm's final model on them with the statistics a
hospital reports (:func:`~fedaaa.common.training.evaluate_local`): AUROC of the measured diameter,
sensitivity and specificity at the clinical 30 mm, aorta Dice, diameter MAE and bias, not-measurable count.
``--model`` adds any other model file (a checkpoint, say: ``pooled-block-4=DIR/compare/pooled/checkpoints/
round-004.safetensors``). Prints a Markdown table and writes it to ``WORK/external_test.md``.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch

from fedaaa.common.cache import InputCache
from fedaaa.common.config import PREPROCESS
from fedaaa.common.metrics import summarize
from fedaaa.common.model import load_model
from fedaaa.common.site import Site
from fedaaa.common.training import evaluate_local
from fedaaa.simulations.baselines import merge
from fedaaa.simulations.synth import default_sites, write_federation


def _f(x: float, spec: str) -> str:
    return "-" if isinstance(x, float) and math.isnan(x) else format(x, spec)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare", required=True, help="the comparison's folder (OUTPUT/compare)")
    ap.add_argument("--work", required=True, help="folder for the test federation and its cache")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--sites", type=int, default=3)
    ap.add_argument("--studies-per-site", type=int, default=40)
    ap.add_argument("--model", action="append", default=[], metavar="NAME=FILE", help="another model to test")
    args = ap.parse_args(argv)
    work, compare = Path(args.work), Path(args.compare)
    specs = default_sites(args.sites, args.studies_per_site, seed=args.seed)
    if not (work / "done").exists():
        write_federation(work / "data", specs)
        (work / "done").touch()
    cache = InputCache(PREPROCESS, work / "cache")
    t = time.perf_counter()
    splits = [Site(work / "data" / s.name).load(split, PREPROCESS, cache).data for s in specs for split in ("train", "val", "test")]  # fmt: skip
    data = merge(splits)
    if data is None:
        raise SystemExit(f"{work}: no usable study")
    print(f"{len(data)} studies ({sum(data.aaa)} AAA) loaded in {time.perf_counter() - t:.0f} s", flush=True)
    lines = [
        f"{len(data)} studies ({sum(data.aaa)} AAA) of a synthetic federation with seed {args.seed}, no arm trained on them",
        "",
        "| arm | n | AUROC | sens (30 mm) | spec (30 mm) | Dice | MAE mm | bias mm | not measurable |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    models = [(p.name, p / "global_model.safetensors") for p in sorted(compare.iterdir())]
    models = [(name, f) for name, f in models if f.is_file()]
    models += [(item.split("=", 1)[0], Path(item.split("=", 1)[-1])) for item in args.model]
    for name, file in models:
        s = summarize(evaluate_local(load_model(file).model, data, torch.device("cpu")))
        lines.append(
            f"| {name} | {s['n']} | {_f(s['auroc'], '.3f')} | {_f(s['sensitivity'], '.3f')} "
            f"| {_f(s['specificity'], '.3f')} | {_f(s['dice'], '.3f')} | {_f(s['diameter_mae_mm'], '.2f')} "
            f"| {_f(s['diameter_bias_mm'], '+.2f')} | {s['unmeasured']} |"
        )
        print(lines[-1], flush=True)
    (work / "external_test.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
