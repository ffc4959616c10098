"""Seeded fuzzing of everything a hospital or a user feeds FedAAA: every input is answered or refused in one line.

A seeded generator mutates a tiny valid NIfTI study (header dims, zooms, datatypes, scaling, offsets,
gzip payloads), a tiny synthetic DICOM study (Rows/Columns, PixelSpacing, BitsAllocated,
NumberOfFrames, RescaleSlope, ImagePositionPatient, truncated files), site manifests (bad bytes, huge
fields, odd paths) and model metadata and weights. Each category runs in ONE subprocess under an
address-space limit (``RLIMIT_AS``, 3 GB: torch, MONAI and pydicom import and run under it) and a
wall-clock timeout, calling ``fedaaa.cli.main`` (``predict --json`` / ``site check --json``) or
``load_model``. Every call must exit 0 or 2 (never 1, a signal, a MemoryError or a traceback), answer
each predict input with exactly one JSON line, and every error must be one line under 300 characters.
"""

from __future__ import annotations

import gzip
import json
import logging
import math
import os
import re
import shutil
import struct
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from fedaaa.common.model import AortaNet, ModelFile, save_model
from fedaaa.common.settings import PreprocessSettings
from fedaaa.simulations.synth import write_site
from tests.conftest import small_site

MEMORY_LIMIT = 3 << 30  # bytes of address space for each category's subprocess
TIMEOUT_S = 120  # wall clock for one category's subprocess
MAX_ERROR_CHARS = 300
SEED = 20240601

RUNNER = textwrap.dedent(
    """
    import contextlib, io, json, logging, resource, sys, traceback
    resource.setrlimit(resource.RLIMIT_AS, (int(sys.argv[1]), int(sys.argv[1])))
    from fedaaa.cli import main
    from fedaaa.common.errors import ConfigError
    from fedaaa.common.model import load_model

    results = []
    for call in json.load(open(sys.argv[2])):
        out, err = io.StringIO(), io.StringIO()
        for handler in logging.root.handlers[:]:
            logging.root.removeHandler(handler)
        try:
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                if call[0] == "load_model":
                    try:
                        load_model(call[1])
                        rc = 0
                    except ConfigError as exc:
                        print(f"error: {exc}", file=sys.stderr)
                        rc = 2
                else:
                    rc = main(call)
        except BaseException as exc:  # anything that escapes is a crash
            rc = f"crash: {type(exc).__name__}"
            err.write(traceback.format_exc())
        results.append({"call": call, "rc": rc, "out": out.getvalue(), "err": err.getvalue()})
    json.dump(results, open(sys.argv[3], "w"))
    """
)


# ------------------------------------------------------------------------------ shared valid inputs
@pytest.fixture(scope="module")
def base(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz-base")
    site = write_site(root, small_site("fz", 1, seed=5, matrix=64))
    torch.manual_seed(0)
    model = save_model(root / "model.safetensors", ModelFile(AortaNet(), PreprocessSettings()))
    hu = np.full((32, 32, 24), -1000, dtype=np.int16)
    hu[6:26, 8:24, :] = 40
    hu[14:18, 12:16, :] = 300
    nii = root / "valid.nii"
    nib.save(nib.Nifti1Image(hu, np.diag([10.0, 10.0, 10.0, 1.0])), str(nii))
    return {"site": site, "study": site / "studies" / "fz-0001", "model": model, "nifti": nii}


def _run(category: str, calls: list[list[str]], tmp_path: Path) -> list[dict]:
    """Run ``calls`` in one subprocess under the memory limit; the per-call results."""
    jobs, results = tmp_path / f"{category}-calls.json", tmp_path / f"{category}-results.json"
    jobs.write_text(json.dumps(calls))
    try:
        proc = subprocess.run(
            [sys.executable, "-c", RUNNER, str(MEMORY_LIMIT), str(jobs), str(results)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{category}: the calls did not finish within {TIMEOUT_S} s (a hang or a runaway input)")
    assert proc.returncode == 0 and results.exists(), (
        f"{category}: the runner died (exit {proc.returncode}): {proc.stderr[-3000:]}"
    )
    return json.loads(results.read_text())


def _short(text: str) -> bool:
    """One line of at most MAX_ERROR_CHARS characters, file paths (long temporary folders) counted as 6."""
    return "\n" not in text and len(re.sub(r"/[^\s'\",:;()]+", "<file>", text)) <= MAX_ERROR_CHARS


def _error_line_problems(text: str) -> list[str]:
    problems = []
    if "Traceback" in text:
        problems.append(f"traceback: {text[-1500:]}")
    for line in text.splitlines():
        if line.startswith("error:") and not _short(line):
            problems.append(f"error line of {len(line)} characters: {line[:200]}...")
    return problems


def _check(category: str, results: list[dict], inputs_per_call: dict[int, list[str]] | None = None) -> None:
    """Every call exits 0/2 without a traceback; predict answers each input with one JSON line."""
    problems = []
    for i, r in enumerate(results):
        where = f"{category} #{i} {r['call'][:2] if r['call'][0] == 'site' else r['call'][-1:]}"
        if r["rc"] not in (0, 2):
            problems.append(f"{where}: exit {r['rc']}: {r['err'][-1500:]}")
        problems += [f"{where}: {p}" for p in _error_line_problems(r["err"])]
        if r["rc"] == 2 and not r["out"]:
            errors = [line for line in r["err"].splitlines() if line.startswith("error:")]
            if len(errors) != 1:
                problems.append(f"{where}: refused with {len(errors)} error lines: {r['err'][-500:]!r}")
        if r["call"][0] == "predict" and "--json" in r["call"]:
            problems += [f"{where}: {p}" for p in _predict_problems(r, inputs_per_call[i])]
        if r["call"][0] == "site" and r["rc"] == 0:
            try:
                report = json.loads(r["out"])
            except ValueError:
                problems.append(f"{where}: site check printed no JSON report: {r['out'][:300]!r}")
                continue
            for s in report["studies"]:
                reason = str(s.get("reason", ""))
                if not _short(reason):
                    problems.append(f"{where}: a study's reason is not one short line: {reason[:200]!r}")
    assert not problems, f"{len(problems)} problem(s):\n" + "\n".join(problems)


def _predict_problems(r: dict, inputs: list[str]) -> list[str]:
    if r["rc"] == 2 and not r["out"]:  # the model itself was refused: one error line, checked above
        return []
    lines = r["out"].splitlines()
    if len(lines) != len(inputs):
        return [f"{len(lines)} output lines for {len(inputs)} inputs: {r['out'][-500:]!r}"]
    problems = []
    for line, path in zip(lines, inputs):
        answer = json.loads(line)
        if answer.get("input") != path:
            problems.append(f"answer for {answer.get('input')!r} where {path!r} was expected")
        error = answer.get("error")
        if error is None and "aaa_present" not in answer:
            problems.append(f"{path}: neither an answer nor an error: {line[:200]}")
        if error is not None and not _short(error):
            problems.append(f"{path}: error is not one short line: {error[:200]!r}")
        if error is None and answer.get("measurable") and not math.isfinite(answer["aaa_probability"]):
            problems.append(f"{path}: non-finite probability")
        if error is None and not answer.get("measurable") and not _short(str(answer.get("reason", ""))):
            problems.append(f"{path}: not measurable without a short reason: {line[:200]}")
    return problems


# ------------------------------------------------------------------------------ NIfTI
NIFTI_FIELDS = {  # name: (offset, struct format, hostile values)
    "dim": (
        40,
        "<8h",
        [
            (3, 32, 32, 24, 1, 1, 1, 1),
            (0, 0, 0, 0, 0, 0, 0, 0),
            (3, 32767, 32767, 32767, 1, 1, 1, 1),
            (3, -32, 32, 24, 1, 1, 1, 1),
            (7, 32, 32, 24, 2, 2, 2, 2),
            (3, 32, 32, 1, 1, 1, 1, 1),
            (3, 2000, 2000, 2000, 1, 1, 1, 1),
        ],
    ),
    "datatype": (70, "<h", [0, 1, 128, 32, 2304, 1792, -1, 16]),
    "bitpix": (72, "<h", [0, 1, 64, 255]),
    "pixdim": (
        76,
        "<8f",
        [
            (1, 0, 0, 0, 1, 1, 1, 1),
            (1, -10, 10, 10, 1, 1, 1, 1),
            (1, math.nan, 10, 10, 1, 1, 1, 1),
            (1, math.inf, 10, 10, 1, 1, 1, 1),
            (1, 1e-30, 1e-30, 1e-30, 1, 1, 1, 1),
            (1, 1e30, 1e30, 1e30, 1, 1, 1, 1),
            (-1, 0.001, 0.001, 0.001, 1, 1, 1, 1),
        ],
    ),
    "vox_offset": (108, "<f", [0.0, -352.0, 1e12, math.nan, 353.0, 100000.0]),
    "scl_slope": (112, "<f", [math.nan, math.inf, 0.0, -1.0, 1e30, 1e-30]),
    "scl_inter": (116, "<f", [math.nan, -math.inf, 1e30]),
    "qform_code": (252, "<h", [0, 5, -1, 1000]),
    "sform_code": (254, "<h", [0, 5, -1]),
    "srow_x": (280, "<4f", [(0, 0, 0, 0), (math.nan, 0, 0, 0), (1e30, 1e30, 1e30, 0)]),
    "sizeof_hdr": (0, "<i", [0, 540, -1, 1 << 30]),
    "magic": (344, "<4s", [b"n+2\0", b"\0\0\0\0", b"ni1\0"]),
}


def _nifti_variants(valid: bytes, rng: np.random.Generator, n: int) -> list[tuple[str, bytes]]:
    out = []
    names = sorted(NIFTI_FIELDS)
    for k in range(n):
        data = bytearray(valid)
        for _ in range(int(rng.integers(1, 3))):
            name = names[int(rng.integers(len(names)))]
            offset, fmt, values = NIFTI_FIELDS[name]
            value = values[int(rng.integers(len(values)))]
            packed = struct.pack(fmt, *value) if isinstance(value, tuple) else struct.pack(fmt, value)
            data[offset : offset + len(packed)] = packed
        kind = k % 4
        if kind == 1:  # truncated payload
            data = data[: int(rng.integers(0, len(data)))]
        out.append(
            (f"nifti-{k:02d}.nii", bytes(data)) if kind < 2 else (f"nifti-{k:02d}.nii.gz", _gz(bytes(data), kind, rng))
        )
    # compressed payloads: truncated, corrupted and a bomb (small file, huge claimed and decompressed size)
    gz = gzip.compress(valid)
    out.append(("gz-truncated.nii.gz", gz[: len(gz) // 2]))
    out.append(("gz-corrupt.nii.gz", gz[:20] + bytes(rng.integers(0, 256, len(gz) - 20, dtype=np.uint8))))
    bomb_header = bytearray(valid[:352])
    bomb_header[40:56] = struct.pack("<8h", 3, 1024, 1024, 1024, 1, 1, 1, 1)
    out.append(("gz-bomb.nii.gz", _gzip_bomb(bytes(bomb_header), 1 << 30)))
    out.append(("not-gzip.nii.gz", valid))
    return out


def _gz(data: bytes, kind: int, rng: np.random.Generator) -> bytes:
    packed = gzip.compress(data, compresslevel=1)
    if kind == 3:  # flip bytes in the compressed stream
        packed = bytearray(packed)
        for i in rng.integers(10, len(packed), 4):
            packed[int(i)] ^= 0xFF
        packed = bytes(packed)
    return packed


def _gzip_bomb(header: bytes, size: int) -> bytes:
    """``header`` then ``size`` zero bytes as a multi-member gzip stream (a megabyte or two on disk)."""
    chunk = gzip.compress(bytes(1 << 24), compresslevel=9)
    return gzip.compress(header) + chunk * (size >> 24)


# ------------------------------------------------------------------------------ DICOM
DICOM_MUTATIONS = {
    "Rows": [0, 1, 65535],
    "Columns": [0, 3, 65535],
    "PixelSpacing": [["0", "0"], ["1e9", "1e9"], ["nan", "1"], ["-1", "-1"], ["1e-9", "1e-9"], ["1"]],
    "BitsAllocated": [1, 7, 64, 0],
    "BitsStored": [0, 40],
    "NumberOfFrames": ["1000000", "0", "-5"],
    "RescaleSlope": ["nan", "1e308", "0", "-inf"],
    "RescaleIntercept": ["nan", "1e308"],
    "ImagePositionPatient": [["0", "0", "0"], ["nan", "0", "0"], ["1e30", "1e30", "1e30"], ["1", "2"]],
    "ImageOrientationPatient": [["0", "0", "0", "0", "0", "0"], ["1", "0", "0", "1", "0", "0"], ["nan"] * 6],
    "SliceThickness": ["0", "-5", "1e9"],
    "SamplesPerPixel": [0, 3],
    "PixelRepresentation": [5],
}


def _dicom_variants(study: Path, out: Path, rng: np.random.Generator, n: int) -> list[Path]:
    files = sorted(p for p in study.rglob("*") if p.is_file())
    names = sorted(DICOM_MUTATIONS)
    variants = []
    for k in range(n):
        target = out / f"dicom-{k:02d}"
        shutil.copytree(study, target)
        copies = sorted(p for p in target.rglob("*") if p.is_file())
        every = bool(rng.integers(2))
        chosen = copies if every else [copies[int(rng.integers(len(copies)))]]
        if k % 5 == 4:  # truncated files
            for p in chosen[: max(1, len(chosen) // 3)]:
                p.write_bytes(p.read_bytes()[: int(rng.integers(0, p.stat().st_size))])
        else:
            name = names[int(rng.integers(len(names)))]
            value = DICOM_MUTATIONS[name][int(rng.integers(len(DICOM_MUTATIONS[name])))]
            for p in chosen:
                _set_dicom(p, name, value)
        variants.append(target)
    assert len(files) == len(copies)
    return variants


def _set_dicom(path: Path, keyword: str, value: object) -> None:
    logging.getLogger("pydicom").setLevel(logging.ERROR)  # invalid values are the point
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds = pydicom.dcmread(path)
        if keyword == "NumberOfFrames" or keyword not in ds:
            ds.add_new(keyword, pydicom.datadict.dictionary_VR(keyword), value)
        else:
            ds[keyword].value = value
        ds.save_as(path)


# ------------------------------------------------------------------------------ manifests
def _manifest_variants(base_site: Path, out: Path, rng: np.random.Generator) -> list[Path]:
    header = b"study_id,path,aaa,max_diameter_mm,split,sex\r\n"
    row = b"fz-0001,studies/fz-0001,1,51.3,train,M\r\n"
    variants: dict[str, bytes] = {
        "valid": header + row,
        "bom": b"\xef\xbb\xbf" + header + row,
        "latin1-bytes": header + b"fz-\xe9\xff\xfe,studies/fz-0001,1,51.3,train,M\r\n",
        "nul-bytes": header + b"fz-0001\0,studies/fz-0001\0,1,51.3,train,M\r\n",
        "utf16": (header + row).decode().encode("utf-16"),
        "huge-field": header + b"fz-" + b"x" * 2_000_000 + b",studies/fz-0001,1,51.3,train,M\r\n",
        "huge-line-unquoted": header + b'"' + b"y" * 300_000 + b"\r\n",
        "absolute-path": header + b"fz-0001,/etc/passwd,1,51.3,train,M\r\n",
        "dotdot-path": header + b"fz-0001,studies/../../../etc,1,51.3,train,M\r\n",
        "dev-path": header + b"fz-0001,/dev/zero,1,51.3,train,M\r\n",
        "file-path": header + b"fz-0001,manifest.csv,1,51.3,train,M\r\n",
        "missing-path": header + b"fz-0001,studies/none,1,51.3,train,M\r\n",
        "newline-in-field": header + b'"fz\n0001","studies/fz-0001",1,51.3,train,M\r\n',
        "bad-values": header + b"fz-0001,studies/fz-0001,2,nan,holdout,M\r\n",
        "inf-diameter": header + b"fz-0001,studies/fz-0001,1,1e999,train,M\r\n",
        "missing-columns": b"study_id,path\r\nfz-0001,studies/fz-0001\r\n",
        "empty": b"",
        "header-only": header,
        "duplicate-ids": header + row * 3,
        "many-rows": header + b"".join(f"fz-{i},studies/fz-0001,{i % 2},,train,M\r\n".encode() for i in range(300)),
        "random-bytes": bytes(rng.integers(0, 256, 4096, dtype=np.uint8)),
        "extra-columns": header.rstrip() + b",x,y\r\n" + row.rstrip() + b",1,2,3,4\r\n",
    }
    sites = []
    for name, text in variants.items():
        site = out / f"manifest-{name}"
        site.mkdir()
        shutil.copytree(base_site / "studies" / "fz-0001", site / "studies" / "fz-0001")
        (site / "manifest.csv").write_bytes(text)
        sites.append(site)
    fifo_site = out / "manifest-fifo"
    fifo_site.mkdir()
    try:
        os.mkfifo(fifo_site / "manifest.csv")  # never written: a reader that opens it would hang
        sites.append(fifo_site)
    except (AttributeError, OSError):
        pass
    return sites


# ------------------------------------------------------------------------------ model files
HOSTILE_JSON = [
    0,
    -1,
    1e308,
    -1e308,
    "x",
    None,
    [],
    {},
    math.nan,
    math.inf,
    2**63,
    True,
    65536,
    0.5,
    [1] * 100,
    "9" * 50,
]


def _model_variants(valid: Path, out: Path, rng: np.random.Generator, n: int) -> list[Path]:
    with safe_open(str(valid), framework="pt") as f:
        meta = dict(f.metadata())
        state = {k: f.get_tensor(k) for k in f.keys()}
    variants = []
    for k in range(n):
        m, s = dict(meta), dict(state)
        key = ["architecture", "preprocess", "threshold", "round", "summary", "format_version", "state"][k % 7]
        value = HOSTILE_JSON[int(rng.integers(len(HOSTILE_JSON)))]
        if key in ("architecture", "preprocess"):
            doc = json.loads(m[key])
            field = sorted(doc)[int(rng.integers(len(doc)))]
            if isinstance(doc[field], list) and rng.integers(2):
                doc[field][int(rng.integers(len(doc[field])))] = value
            else:
                doc[field] = value
            m[key] = json.dumps(doc)
        elif key == "state":
            name = sorted(s)[int(rng.integers(len(s)))]
            choice = int(rng.integers(3))
            t = s[name].clone()
            if choice == 0:
                t.view(-1)[0] = [math.nan, math.inf, -math.inf][int(rng.integers(3))]
            elif choice == 1:
                t = torch.zeros(*[int(d) for d in rng.integers(1, 40, int(rng.integers(1, 5)))])
            else:
                t = t.to(torch.int64)
            s[name] = t
        elif rng.integers(3) == 0:
            m.pop(key)
        else:
            m[key] = json.dumps(value) if key == "summary" else str(value)
        path = out / f"model-{k:02d}-{key}.safetensors"
        save_file(s, str(path), metadata=m)
        variants.append(path)
    data = valid.read_bytes()
    for name, blob in {
        "truncated": data[: len(data) // 2],
        "header-huge": (2**40).to_bytes(8, "little") + data[8:],
        "random": bytes(rng.integers(0, 256, 2048, dtype=np.uint8)),
    }.items():
        (out / f"model-{name}.safetensors").write_bytes(blob)
        variants.append(out / f"model-{name}.safetensors")
    return variants


# ------------------------------------------------------------------------------ the tests
@pytest.mark.slow
def test_fuzz_nifti_inputs_are_answered_or_refused_in_one_line(base, tmp_path):
    rng = np.random.default_rng(SEED)
    paths = []
    for name, blob in _nifti_variants(base["nifti"].read_bytes(), rng, 16):
        (tmp_path / name).write_bytes(blob)
        paths.append(str(tmp_path / name))
    results = _run("nifti", [["predict", *paths, "--json", "--model", str(base["model"])]], tmp_path)
    _check("nifti", results, {0: paths})


@pytest.mark.slow
def test_fuzz_dicom_inputs_are_answered_or_refused_in_one_line(base, tmp_path):
    rng = np.random.default_rng(SEED + 1)
    paths = [str(p) for p in _dicom_variants(base["study"], tmp_path, rng, 12)]
    results = _run("dicom", [["predict", *paths, "--json", "--model", str(base["model"])]], tmp_path)
    _check("dicom", results, {0: paths})


@pytest.mark.slow
def test_fuzz_manifests_are_checked_or_refused_in_one_line(base, tmp_path):
    rng = np.random.default_rng(SEED + 2)
    sites = _manifest_variants(base["site"], tmp_path, rng)
    cache = tmp_path / "cache"
    calls = [["site", "check", str(s), "--json", "--workers", "1", "--cache-dir", str(cache)] for s in sites]
    _check("manifest", _run("manifest", calls, tmp_path))


@pytest.mark.slow
def test_fuzz_model_files_are_loaded_or_refused_in_one_line(base, tmp_path):
    rng = np.random.default_rng(SEED + 3)
    models = [str(p) for p in _model_variants(base["model"], tmp_path, rng, 28)]
    study = str(base["study"])
    calls = [["load_model", m] for m in models] + [["predict", study, "--json", "--model", m] for m in models]
    results = _run("model", calls, tmp_path)
    _check("model", results, {i: [study] for i in range(len(models), 2 * len(models))})
    refused = sum(r["rc"] == 2 for r in results[: len(models)])
    assert refused >= len(models) // 2  # most mutations make a file that must be refused
