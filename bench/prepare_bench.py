"""Preparation time of one federated message at a cached site, without and with the content index.

In deployment every train/evaluate message runs in a fresh process: ``Site(root).load("train", ...)`` with a
new :class:`InputCache` and no in-memory state. Every study is a cache hit either way; what differs is how
its key is found: by hashing every byte of the study (``use_index=False``, what every message did before
the index) or from the persistent content index (file names, sizes, times and inodes unchanged).

    python bench/prepare_bench.py                      # 100 studies of 128x128 under /tmp/prepbench
    python bench/prepare_bench.py --studies 20 --repeat 2
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # a bare source tree works too

from fedaaa.common.cache import InputCache  # noqa: E402
from fedaaa.common.config import PREPROCESS  # noqa: E402
from fedaaa.common.site import Site  # noqa: E402
from fedaaa.simulations.synth import ScannerProfile, SiteSpec, write_site  # noqa: E402

MB = 1e6


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def evict(folder: Path) -> None:
    """Drop the study files from the page cache (only these files), as after a day of other I/O."""
    for f in folder.rglob("*"):
        if f.is_file():
            fd = os.open(f, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)


def one_message(root: Path, cache_dir: Path, use_index: bool, cold: bool) -> tuple[float, float, InputCache, int]:
    """A fresh process's preparation: new Site, new InputCache, nothing in memory. Returns the seconds of
    keying the split (``Site.prepare``: digests and record look-ups) and of the whole ``Site.load``."""
    if cold:
        evict(root / "studies")
    site = Site(root)
    start = time.perf_counter()
    site.prepare(site.split("train"), InputCache(PREPROCESS, cache_dir, use_index=use_index), workers=1)
    keyed = time.perf_counter() - start
    if cold:
        evict(root / "studies")
    start = time.perf_counter()
    cache = InputCache(PREPROCESS, cache_dir, use_index=use_index)
    split = Site(root).load("train", PREPROCESS, cache, workers=1)
    return keyed, time.perf_counter() - start, cache, len(split)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="/tmp/prepbench", help="where the site and its cache live")
    parser.add_argument("--studies", type=int, default=100)
    parser.add_argument("--matrix", type=int, default=128)
    parser.add_argument("--repeat", type=int, default=3, help="messages timed per mode (best and median shown)")
    parser.add_argument("--cold", action="store_true", help="evict the study files from the page cache first")
    args = parser.parse_args()

    out = Path(args.out)
    spec = SiteSpec(
        name=f"site-{args.studies}x{args.matrix}",
        n_studies=args.studies,
        aaa_prevalence=0.5,
        profile=ScannerProfile(name="bench", matrix=args.matrix),
        seed=5,
    )
    t = time.perf_counter()
    root = write_site(out, spec, splits=(1.0, 0.0, 0.0))  # every study in the train split; reused if present
    print(
        f"site {root}: {args.studies} studies, {folder_bytes(root / 'studies') / MB:.0f} MB ({time.perf_counter() - t:.1f} s)"
    )
    cache_dir = out / f"cache-{spec.name}"
    _, t, cache, n = one_message(
        root, cache_dir, use_index=True, cold=False
    )  # fills the cache (a first round, or site check)
    print(f"warm-up: {n} studies usable, {cache.decoded} decoded, {cache.hashed} hashed in {t:.1f} s")

    rows = []
    for label, use_index in (("before: hash every study (no index)", False), ("after: content index", True)):
        keyed, loaded = [], []
        for _ in range(args.repeat):
            k, seconds, cache, n = one_message(root, cache_dir, use_index, args.cold)
            keyed.append(k)
            loaded.append(seconds)
        rows.append((label, min(keyed), min(loaded), sorted(loaded)[len(loaded) // 2], cache.hashed, cache.decoded, n))

    print(
        f"\nPython {platform.python_version()}, {os.cpu_count()} CPUs, {platform.machine()}; "
        f"{'cold' if args.cold else 'warm'} page cache; one message = Site.load('train') with a new InputCache; "
        f"best of {args.repeat} (median for the whole load)\n"
    )
    print("| mode | keying the split, s | whole Site.load, best s | median s | studies hashed | decoded | loaded |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, keyed, best, median, hashed, decoded, n in rows:
        print(f"| {label} | {keyed:.2f} | {best:.2f} | {median:.2f} | {hashed} | {decoded} | {n} |")
    print(f"\nspeed-up (best): keying {rows[0][1] / rows[1][1]:.1f}x, whole load {rows[0][2] / rows[1][2]:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
