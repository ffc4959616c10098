"""Time of ``fedaaa predict`` on one full-size study, cold: decoding, preprocessing, segmentation, measurement.

    python bench/predict_bench.py [--model MODEL] [--out DIR] [--repeat 3] [--device cpu|cuda]

Writes one synthetic aneurysm patient as a 512 x 512 DICOM series at 1 mm slices (about 200-320 slices:
the generator's scan length), evicts its files from the page cache before every run (``posix_fadvise``),
and times :func:`fedaaa.common.predict.predict_study` end to end in this process (the model loaded once, as
``fedaaa predict`` does for a batch). Without ``--model`` an untrained network of the default architecture
is used: the time does not depend on the weights. Prints each run and the best.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from prepare_bench import evict  # noqa: E402

from fedaaa.common.config import PREPROCESS  # noqa: E402
from fedaaa.common.model import AortaNet, ModelFile, load_model  # noqa: E402
from fedaaa.common.predict import predict_study  # noqa: E402
from fedaaa.simulations.synth import write_variant  # noqa: E402

FULL_SIZE = {"matrix": 512, "fov_mm": 400.0, "slice_thickness_mm": 1.0, "slice_spacing_mm": 1.0}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--out", default=None)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--seed", type=int, default=5)
    ap.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    args = ap.parse_args(argv)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="predict-bench-"))
    study = out / "study"
    if not study.exists():
        write_variant(study, args.seed, FULL_SIZE, kind="aneurysm", sex="M")
    files = sorted(p for p in study.rglob("*") if p.is_file())
    print(f"{study}: {len(files)} files, {sum(p.stat().st_size for p in files) / 1e6:.0f} MB", flush=True)
    mf = load_model(args.model) if args.model else ModelFile(AortaNet().eval(), PREPROCESS)
    torch.set_num_threads(torch.get_num_threads())
    times = []
    for i in range(args.repeat):
        evict(study)
        t = time.perf_counter()
        answer = predict_study(mf, study, torch.device(args.device))
        times.append(time.perf_counter() - t)
        shown = answer.get("error") or answer.get("max_diameter_mm") or answer.get("reason")
        print(f"run {i + 1}: {times[-1]:.2f} s ({shown})", flush=True)
    print(
        f"best {min(times):.2f} s, median {sorted(times)[len(times) // 2]:.2f} s on {torch.get_num_threads()} threads"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
