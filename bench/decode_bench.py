"""How fast a site turns a CT study into model input: decoding, reading, preprocessing, caching, workers.

Writes one realistic axial CT series (default 512x512x300, Explicit VR Little Endian) with the synthetic
generator, optionally re-encodes the same files as RLE Lossless and JPEG 2000 Lossless (and JPEG-LS), then
measures, each best of ``--repeat`` runs:

  a. pydicom bare: ``dcmread`` + ``.pixel_array`` of every file, one after the other
  b. ``common.io.read_study(folder)`` (the whole reader: headers, series choice, geometry, HU, RAS)
  c. ``common.preprocess.volume_to_input(volume, PreprocessSettings())`` (MONAI pipeline to the model input)
  d. ``InputCache(settings, cache_dir).load(folder)``: a miss (fresh cache) and a hit (``decoded`` stays put)
  e. ``Site.load(..., workers=N)``: several smaller studies in a site folder, 1 worker vs N workers

and prints a markdown table (seconds, slices/s, MB/s of files read and of decoded pixels), also written to
``OUT/decode_bench.md`` when ``--out`` is given.

    python bench/decode_bench.py                       # full size, in a temporary folder
    python bench/decode_bench.py --slices 60 --matrix 256 --codecs none --site-studies 0   # a quick look
"""

from __future__ import annotations

import argparse
import csv
import gc
import inspect
import os
import platform
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pydicom  # noqa: E402
from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless  # noqa: E402

from fedaaa.common.cache import InputCache  # noqa: E402
from fedaaa.common.io import read_study  # noqa: E402
from fedaaa.common.preprocess import PreprocessSettings, volume_to_input  # noqa: E402
from fedaaa.common.site import Site  # noqa: E402
from fedaaa.simulations.synth import ScannerProfile, render_study, write_study  # noqa: E402

CODECS = {"rle": RLELossless, "jpeg2000": JPEG2000Lossless, "jpegls": JPEGLSLossless}
MB = 1e6


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def best_of(n: int, fn, setup=None):
    """(best seconds, last result) of ``n`` runs; ``setup()`` runs untimed before each."""
    best, result = float("inf"), None
    for _ in range(max(1, n)):
        if setup is not None:
            setup()
        result = None
        gc.collect()
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def files_of(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.is_file())


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in files_of(folder))


# ------------------------------------------------------------------------------ writing the studies
def profile_for(seed: int, slices: int, matrix: int, fov_mm: float, noise_hu: float) -> tuple[ScannerProfile, str, str]:
    """A profile whose slice spacing gives about ``slices`` slices over the anatomy drawn for ``seed``.

    The scanned range depends only on the random draws (not on the profile), so a cheap 32x32 render with
    the same seed measures it first.
    """
    kind, sex = "aneurysm", "M"
    probe = render_study(
        np.random.default_rng(seed),
        ScannerProfile(matrix=32, fov_mm=fov_mm, slice_thickness_mm=5.0, noise_hu=0.0),
        kind,
        sex,
    )
    cover = float(probe.z_mm.max() - probe.z_mm.min()) + 5.0
    thickness = max(0.5, round(cover / slices, 3))
    profile = ScannerProfile(
        name=f"bench-{matrix}",
        manufacturer="Bench CT",
        matrix=matrix,
        fov_mm=fov_mm,
        slice_thickness_mm=thickness,
        noise_hu=noise_hu,
        contrast=True,
    )
    return profile, kind, sex


def write_series(
    folder: Path, seed: int, slices: int, matrix: int, fov_mm: float = 380.0, noise_hu: float = 12.0
) -> dict:
    profile, kind, sex = profile_for(seed, slices, matrix, fov_mm, noise_hu)
    t0 = time.perf_counter()
    study = render_study(np.random.default_rng(seed), profile, kind, sex)
    t_render = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_study(folder, study, profile, f"bench-{seed:04d}", np.random.default_rng(seed + 1))
    t_write = time.perf_counter() - t0
    return {
        "slices": int(study.hu.shape[0]),
        "matrix": matrix,
        "thickness_mm": profile.slice_thickness_mm,
        "render_s": t_render,
        "write_s": t_write,
        "max_diameter_mm": study.max_diameter_mm,
        "kind": kind,
    }


def encode_copy(src: Path, dst: Path, syntax) -> float:
    """Re-encode every DICOM file of ``src`` into ``dst`` with ``syntax``; returns seconds."""
    t0 = time.perf_counter()
    for f in files_of(src):
        out = dst / f.relative_to(src)
        out.parent.mkdir(parents=True, exist_ok=True)
        try:
            ds = pydicom.dcmread(f)
        except pydicom.errors.InvalidDicomError:
            shutil.copy(f, out)
            continue
        if (
            "PixelData" in ds
            and not ds.file_meta.TransferSyntaxUID.is_compressed
            and int(ds.get("NumberOfFrames") or 1) == 1
        ):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ds.compress(syntax)
        ds.save_as(out, enforce_file_format=True)
    return time.perf_counter() - t0


# ------------------------------------------------------------------------------ measuring
def bare_pydicom(folder: Path) -> int:
    n = 0
    for f in files_of(folder):
        try:
            ds = pydicom.dcmread(f)
        except pydicom.errors.InvalidDicomError:
            continue
        if "PixelData" in ds:
            _ = ds.pixel_array  # decode
            n += 1
    return n


def measure_variant(name: str, folder: Path, scratch: Path, repeat: int, settings: PreprocessSettings) -> list[dict]:
    rows = []
    file_mb = folder_bytes(folder) / MB
    log(f"[{name}] pydicom bare decode ...")
    t, n_files = best_of(repeat, lambda: bare_pydicom(folder))
    log(f"[{name}] read_study ...")
    t_read, volume = best_of(repeat, lambda: read_study(folder))
    n = int(volume.hu.shape[2])
    pixel_mb = volume.hu.shape[0] * volume.hu.shape[1] * n * 2 / MB  # as 16-bit stored values
    rows.append(
        dict(
            variant=name,
            step="a. pydicom dcmread + pixel_array",
            seconds=t,
            slices=n_files,
            file_mb=file_mb,
            pixel_mb=pixel_mb,
        )
    )
    rows.append(dict(variant=name, step="b. read_study", seconds=t_read, slices=n, file_mb=file_mb, pixel_mb=pixel_mb))
    log(f"[{name}] volume_to_input ...")
    t_pre, x = best_of(repeat, lambda: volume_to_input(volume, settings))
    rows.append(
        dict(
            variant=name,
            step=f"c. volume_to_input -> {tuple(x.shape)}",
            seconds=t_pre,
            slices=n,
            file_mb=None,
            pixel_mb=pixel_mb,
        )
    )
    volume = x = None  # free before the next variant
    log(f"[{name}] InputCache miss / hit ...")
    caches = []

    def fresh():
        cache_dir = scratch / f"cache-{name}-{len(caches)}"
        shutil.rmtree(cache_dir, ignore_errors=True)
        caches.append(InputCache(settings, cache_dir))

    t_miss, _ = best_of(repeat, lambda: caches[-1].load(folder), setup=fresh)
    cache = caches[-1]
    before = cache.decoded
    t_hit, _ = best_of(repeat, lambda: cache.load(folder))
    new_decodes = cache.decoded - before
    rows.append(
        dict(
            variant=name, step="d. InputCache.load, miss", seconds=t_miss, slices=n, file_mb=file_mb, pixel_mb=pixel_mb
        )
    )
    rows.append(
        dict(
            variant=name,
            step=f"d. InputCache.load, hit ({new_decodes} new decodes)",
            seconds=t_hit,
            slices=n,
            file_mb=file_mb,
            pixel_mb=None,
        )
    )
    for c in caches:
        shutil.rmtree(c.dir, ignore_errors=True)
    return rows


def measure_site(
    root: Path,
    scratch: Path,
    n_studies: int,
    matrix: int,
    slices: int,
    workers: int,
    repeat: int,
    settings: PreprocessSettings,
) -> list[dict]:
    if "workers" not in inspect.signature(Site.load).parameters:
        log("Site.load takes no workers argument: skipping the parallel measurement")
        return []
    site = root / "site"
    rows_csv, total = [], 0
    for i in range(n_studies):
        sid = f"s{i:02d}"
        info = write_series(site / "studies" / sid, seed=100 + i, slices=slices, matrix=matrix)
        total += info["slices"]
        rows_csv.append(
            (sid, f"studies/{sid}", int(info["max_diameter_mm"] >= 30), f"{info['max_diameter_mm']:.1f}", "train")
        )
        log(f"[site] wrote study {i + 1}/{n_studies} ({info['slices']} slices)")
    with open(site / "manifest.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(("study_id", "path", "aaa", "max_diameter_mm", "split"))
        w.writerows(rows_csv)
    file_mb = folder_bytes(site / "studies") / MB
    pixel_mb = total * matrix * matrix * 2 / MB
    out = []
    for w in sorted({1, workers}):
        counter = []

        def fresh():
            cache_dir = scratch / f"site-cache-{w}-{len(counter)}"
            shutil.rmtree(cache_dir, ignore_errors=True)
            counter.append(InputCache(settings, cache_dir))

        log(f"[site] Site.load with workers={w} ...")
        t, loaded = best_of(repeat, lambda: Site(site).load("train", settings, counter[-1], workers=w), setup=fresh)
        assert len(loaded) == n_studies, loaded.skipped
        out.append(
            dict(
                variant=f"site: {n_studies} studies {matrix}x{matrix}, {total} slices",
                step=f"e. Site.load workers={w} (cold cache)",
                seconds=t,
                slices=total,
                file_mb=file_mb,
                pixel_mb=pixel_mb,
            )
        )
        for c in counter:
            shutil.rmtree(c.dir, ignore_errors=True)
    if len(out) == 2:
        out[1]["step"] += f", speed-up x{out[0]['seconds'] / out[1]['seconds']:.2f}"
    return out


# ------------------------------------------------------------------------------ report
def table(rows: list[dict]) -> str:
    lines = ["| study | step | seconds | slices/s | file MB/s | pixel MB/s |", "|---|---|---:|---:|---:|---:|"]
    for r in rows:
        s = r["seconds"]
        fmt = lambda mb: f"{mb / s:.0f}" if mb else "-"  # noqa: E731
        lines.append(
            f"| {r['variant']} | {r['step']} | {s:.3f} | {r['slices'] / s:.0f} | {fmt(r['file_mb'])} | "
            f"{fmt(r['pixel_mb'])} |"
        )
    return "\n".join(lines)


def environment() -> str:
    import torch

    return (
        f"Python {platform.python_version()}, pydicom {pydicom.__version__}, torch {torch.__version__}, "
        f"{os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), torch threads "
        f"{torch.get_num_threads()}"
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--slices", type=int, default=300, help="about this many slices in the big series")
    ap.add_argument("--matrix", type=int, default=512)
    ap.add_argument("--out", type=Path, default=None, help="keep the studies and the report here")
    ap.add_argument("--workers", type=int, default=2, help="workers for the Site.load comparison")
    ap.add_argument("--repeat", type=int, default=3, help="best of this many runs")
    ap.add_argument("--codecs", default="rle,jpeg2000", help="comma list of rle, jpeg2000, jpegls, or 'none'")
    ap.add_argument("--site-studies", type=int, default=4, help="studies in the parallel site test (0 = skip)")
    ap.add_argument("--site-matrix", type=int, default=256)
    ap.add_argument("--site-slices", type=int, default=120)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    codecs = [] if args.codecs.strip().lower() in ("", "none") else [c.strip() for c in args.codecs.split(",")]
    unknown = [c for c in codecs if c not in CODECS]
    if unknown:
        ap.error(f"unknown codec(s) {unknown}; choose from {sorted(CODECS)}")

    root = args.out or Path(tempfile.mkdtemp(prefix="decode-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix="decode-bench-cache-"))
    settings = PreprocessSettings()
    notes = []
    try:
        big = root / "explicit"
        shutil.rmtree(big, ignore_errors=True)
        log(f"writing a {args.matrix}x{args.matrix} series of ~{args.slices} slices into {big} ...")
        info = write_series(big, args.seed, args.slices, args.matrix)
        notes.append(
            f"series: {info['slices']} slices of {args.matrix}x{args.matrix}, {info['thickness_mm']} mm apart, "
            f"{folder_bytes(big) / MB:.0f} MB on disk (Explicit VR LE); rendered in {info['render_s']:.1f} s, "
            f"written in {info['write_s']:.1f} s"
        )
        variants = [("explicit VR LE", big)]
        for c in codecs:
            dst = root / c
            shutil.rmtree(dst, ignore_errors=True)
            log(f"re-encoding as {CODECS[c].name} ...")
            t = encode_copy(big, dst, CODECS[c])
            notes.append(f"{CODECS[c].name}: encoded in {t:.1f} s, {folder_bytes(dst) / MB:.0f} MB on disk")
            variants.append((CODECS[c].name, dst))
        rows = []
        for name, folder in variants:
            rows += measure_variant(name, folder, scratch, args.repeat, settings)
        if codecs:
            ref = read_study(big).hu
            for name, folder in variants[1:]:
                same = np.array_equal(ref, read_study(folder).hu)
                notes.append(f"{name}: HU volume identical to the uncompressed one: {same}")
            del ref
        if args.site_studies > 0:
            rows += measure_site(
                root,
                scratch,
                args.site_studies,
                args.site_matrix,
                args.site_slices,
                args.workers,
                max(1, min(args.repeat, 2)),
                settings,
            )
        report = "\n".join(
            [
                f"# Decode benchmark ({time.strftime('%Y-%m-%d')})",
                "",
                f"`python bench/decode_bench.py {' '.join(argv if argv is not None else sys.argv[1:])}`".replace(
                    " `", "`"
                ),
                "",
                environment(),
                "",
                *[f"- {n}" for n in notes],
                "",
                f"Best of {args.repeat} runs (site: best of {max(1, min(args.repeat, 2))}). MB/s: file bytes read per "
                "second and decoded 16-bit pixel bytes per second.",
                "",
                table(rows),
                "",
            ]
        )
        print(report)
        if args.out:
            (args.out / "decode_bench.md").write_text(report)
            log(f"report written to {args.out / 'decode_bench.md'}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        if args.out is None:
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
