"""The CUDA path once, end to end, on a machine with an NVIDIA GPU: the same code a hospital's GPU runs.

    python bench/cuda_check.py --out DIR [--work /tmp/cuda-check] [--sites 4] [--studies-per-site 50]
                               [--train-minutes 5]

1. writes synthetic hospitals (one process per hospital) and preprocesses their studies into the input
   cache (one process per hospital and split: the cache is safe to share);
2. times one training epoch of the pooled studies on the CPU, on the GPU with the patches made in the
   training process, and on the GPU with loader workers (``FEDAAA_LOADER_WORKERS``);
3. trains the pooled model on the GPU (``fedaaa train --mode pooled --device cuda --max-minutes``);
4. runs ``fedaaa predict --json --report-dir`` on the GPU over three held-out studies and, when
   ``FEDAAA_REAL_CT`` names the real CT's folder, the real scan;
5. times ``predict`` on one 512 x 512 study on the GPU (``bench/predict_bench.py --device cuda``).

Everything it measured is printed and written into ``--out`` (``timings.json``, the model, its history, the
answers, and the reports as ``reports.tar.gz``). Nothing here is needed by CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch

from fedaaa.common.cache import InputCache
from fedaaa.common.config import PREPROCESS
from fedaaa.common.model import AortaNet
from fedaaa.common.settings import TrainSettings
from fedaaa.common.site import Site
from fedaaa.common.training import train_local
from fedaaa.simulations.baselines import load_splits
from fedaaa.simulations.synth import SiteSpec, default_sites, write_federation

HERE = Path(__file__).resolve().parent


def _write(root: str, spec: SiteSpec) -> None:
    write_federation(Path(root), [spec])


def _prepare(site: str, split: str, cache_dir: str) -> int:
    loaded = Site(Path(site)).load(split, PREPROCESS, InputCache(PREPROCESS, Path(cache_dir)))
    return 0 if loaded.data is None else len(loaded.data)


def _cli(*args: str, log: Path) -> subprocess.CompletedProcess:
    done = subprocess.run([sys.executable, "-m", "fedaaa.cli", *args], capture_output=True, text=True)
    log.write_text(done.stdout + done.stderr)
    print(done.stderr[-3000:], flush=True)
    return done


def _epoch_seconds(train, device: str, workers: int) -> float:
    torch.manual_seed(0)
    model = AortaNet()
    settings = TrainSettings(local_epochs=1, seed=1)
    train_local(model, train, settings, torch.device(device), workers)  # warm-up: kernels, allocator, workers
    if device == "cuda":
        torch.cuda.synchronize()
    t = time.perf_counter()
    train_local(model, train, settings, torch.device(device), workers)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--work", default="/tmp/cuda-check")
    ap.add_argument("--sites", type=int, default=4)
    ap.add_argument("--studies-per-site", type=int, default=50)
    ap.add_argument("--train-minutes", type=float, default=5.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cuda", help="cuda (default); cpu runs the same steps as a dry run")
    args = ap.parse_args(argv)
    out, work = Path(args.out), Path(args.work)
    out.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)
    found: dict = {
        "torch": torch.__version__,
        "cuda": torch.cuda.is_available(),
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "cpu_count": os.cpu_count(),
    }
    print(found, flush=True)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("no CUDA device: nothing to check", file=sys.stderr)
        return 1
    dev = args.device

    def save() -> None:
        (out / "timings.json").write_text(json.dumps(found, indent=1))

    t = time.perf_counter()
    data, cache_dir = work / "data", work / "cache"
    specs = default_sites(args.sites, args.studies_per_site, seed=args.seed)
    with ProcessPoolExecutor(len(specs)) as pool:
        list(pool.map(_write, [str(data)] * len(specs), specs))
    sites = [data / s.name for s in specs]
    found["synth_s"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    jobs = [(str(s), split) for s in sites for split in ("train", "val", "test")]
    with ProcessPoolExecutor(min(len(jobs), os.cpu_count() or 1)) as pool:
        counts = list(pool.map(_prepare, *zip(*jobs), [str(cache_dir)] * len(jobs)))
    found["preprocess_s"] = round(time.perf_counter() - t, 1)
    found["studies"] = dict(zip([f"{Path(s).name}/{split}" for s, split in jobs], counts))
    print(found, flush=True)
    save()

    train, _ = load_splits(sites, InputCache(PREPROCESS, cache_dir))
    workers = max(1, min(8, (os.cpu_count() or 2) - 1))
    found["epoch_s"] = {f"cpu, {torch.get_num_threads()} threads": round(_epoch_seconds(train, "cpu", 0), 2)}
    found["epoch_s"] |= {
        f"{dev}, no loader workers": round(_epoch_seconds(train, dev, 0), 2),
        f"{dev}, {workers} loader workers": round(_epoch_seconds(train, dev, workers), 2),
    }
    found["epoch_patches"] = TrainSettings().patches_per_study * len(train.masked)
    os.environ["FEDAAA_LOADER_WORKERS"] = str(workers)  # for the `fedaaa train` below
    print(found, flush=True)
    save()

    run = work / "pooled"
    t = time.perf_counter()
    done = _cli(
        "train", "--mode", "pooled", "--device", dev, "--rounds", "1000", "--local-epochs", "2",
        "--max-minutes", str(args.train_minutes), "--cache-dir", str(cache_dir), "--output", str(run),
        *map(str, sites), log=out / "train.log",
    )  # fmt: skip
    found["train_s"] = round(time.perf_counter() - t, 1)
    found["train_rc"] = done.returncode
    save()
    model = run / "global_model.safetensors"
    if done.returncode != 0 or not model.is_file():
        return 1
    for name in ("global_model.safetensors", "history.json"):
        (out / name).write_bytes((run / name).read_bytes())

    tests = [study.path for site in sites for study in Site(site).split("test")][:3]
    real = os.environ.get("FEDAAA_REAL_CT")
    inputs = [*map(str, tests), *([str(Path(real) / "example_ct.nii.gz")] if real else [])]
    t = time.perf_counter()
    done = _cli("predict", "--json", "--report-dir", str(work / "reports"), "--model", str(model), *inputs,
                log=out / "predict.log")  # fmt: skip
    found["predict_s"] = round(time.perf_counter() - t, 1)
    found["predict"] = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    for answer in found["predict"]:
        answer["input"] = Path(answer["input"]).name  # the folder names of synthetic studies only
    save()
    with tarfile.open(out / "reports.tar.gz", "w:gz") as tar:
        tar.add(work / "reports", arcname="reports")

    bench = subprocess.run(
        [sys.executable, str(HERE / "predict_bench.py"), "--device", dev, "--repeat", "2", "--model", str(model),
         "--out", str(work / "bench")],
        capture_output=True, text=True,
    )  # fmt: skip
    found["predict_bench"] = bench.stdout.strip().splitlines()[-4:] + bench.stderr.strip().splitlines()[-2:]
    save()
    print(json.dumps({k: v for k, v in found.items() if k != "predict"}, indent=1))
    for answer in found["predict"]:
        print(json.dumps(answer)[:400])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
