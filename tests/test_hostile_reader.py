"""Hostile inputs: every one gets one answer, fast, in bounded memory, and never blocks.

One test per defect class: a tiny NIfTI header declaring a huge image; a small ``.nii.gz`` that inflates far
beyond what is reasonable; absurd voxel sizes (400 mm, 0.001 mm, NaN, zero) in NIfTI and DICOM, refused
before any pixel is decoded; FIFOs, devices and symbolic-link loops as study paths or inside a study (never
opened, so nothing blocks, and the content hashing never reads them); a symbolic link out of the study to
``/etc``; a folder nested 1200 levels deep; stray files inside a study (an 8-byte text file, a 1 GiB
sparse file of zeros) that are skipped with a warning, as the README promises.

The reading runs in a child process under ``RLIMIT_AS`` (:data:`AS_LIMIT`, far below the 8.6 GB the
defects used) with a wall-clock limit; it prints one JSON line per input as soon as it is answered, so an
input that blocks or exhausts memory fails its own test. Each input goes both roads: ``load_study`` (what
``fedaaa predict`` runs) and ``InputCache.prepare`` (what ``fedaaa site check`` and training run: hashing
first).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from fedaaa.common.errors import StudyError
from fedaaa.common.io import dicom as dicom_module
from fedaaa.common.io import nifti as nifti_module
from fedaaa.common.io import read_study, walk
from fedaaa.common.io.volume import MAX_VOXELS
from fedaaa.common.preprocess import load_study
from fedaaa.common.settings import PreprocessSettings
from fedaaa.simulations.synth import write_site
from tests.conftest import small_site

AS_LIMIT = 3 << 30  # address space of the child: torch + MONAI import in about 1.5 GB of it
RSS_LIMIT_KB = 1_500_000  # peak resident memory of the child after any hostile input
CHILD_TIMEOUT_S = 150
FAST_S = 8.0  # seconds one hostile input may take on a busy 2-core machine (the defects took 10 s to hours)

CHILD = textwrap.dedent(
    """
    import json, resource, sys, tempfile, time, traceback
    resource.setrlimit(resource.RLIMIT_AS, ({limit}, {limit}))
    from pathlib import Path
    from fedaaa.common.cache import InputCache
    from fedaaa.common.errors import StudyError
    from fedaaa.common.preprocess import load_study
    from fedaaa.common.settings import PreprocessSettings
    def peak_rss_kb():
        # VmHWM: this process image's own peak (ru_maxrss would carry over the parent's across fork/exec)
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    settings = PreprocessSettings()
    cache = InputCache(settings, Path(tempfile.mkdtemp()), use_index=False)
    print(json.dumps({{"ready": True}}), flush=True)
    for name, path in json.loads(sys.argv[1]):
        out = {{"name": name}}
        for road in ("predict", "cache"):
            t0 = time.monotonic()
            try:
                if road == "predict":
                    _, info = load_study(path, settings)
                    out[road] = {{"warnings": list(info.warnings), "skipped_files": info.skipped_files}}
                else:
                    _, outcome = cache.prepare(path)
                    out[road] = {{"error": outcome.error}} if outcome.error else {{"warnings": list(outcome.info.warnings)}}
            except StudyError as err:
                out[road] = {{"error": err.reason, "line": str(err)}}
            except BaseException as exc:
                out[road] = {{"crash": traceback.format_exc()}}
            out[road]["seconds"] = time.monotonic() - t0
            out[road]["rss_kb"] = peak_rss_kb()
        print(json.dumps(out), flush=True)
    """
).format(limit=AS_LIMIT)


# ------------------------------------------------------------------------------ building hostile inputs
def _nifti_header(shape: tuple[int, ...], zooms: tuple[float, float, float], dtype=np.int16) -> bytes:
    hdr = nib.Nifti1Header()
    hdr.set_data_shape(shape)
    hdr.set_data_dtype(dtype)
    affine = np.diag([*zooms, 1.0])
    hdr.set_qform(affine, code=1)
    hdr.set_sform(affine, code=1)
    hdr["vox_offset"] = 352
    return hdr.binaryblock + b"\0" * 4


def _gzip_member(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def _gzip_bomb(path: Path, header: bytes, inflated: int) -> Path:
    """A multi-member .nii.gz: the header, then ``inflated`` bytes of zeros, from one 16 MiB member
    repeated, so it is built in well under a second and never holds more than 16 MiB."""
    block = 16 << 20
    member = _gzip_member(b"\0" * block)
    with path.open("wb") as fh:
        fh.write(_gzip_member(header))
        for _ in range(inflated // block):
            fh.write(member)
        if inflated % block:
            fh.write(_gzip_member(b"\0" * (inflated % block)))
    return path


def _nifti(path: Path, hu: np.ndarray, affine: np.ndarray) -> Path:
    nib.save(nib.Nifti1Image(hu.astype(np.int16), affine), str(path))
    return path


def _phantom(shape=(64, 64, 40)) -> np.ndarray:
    """HU: air around an elliptic soft-tissue body with noise (a real-looking, compressible CT)."""
    i, j, _ = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    hu = np.where(
        ((i - shape[0] / 2) / (shape[0] / 2.5)) ** 2 + ((j - shape[1] / 2) / (shape[1] / 3)) ** 2 < 1, 40, -1000
    )
    return hu + np.random.default_rng(0).normal(0, 10, shape)


def _mkdir_deep(root: Path, depth: int) -> None:
    """``root/d/d/.../d`` ``depth`` levels deep, made with directory descriptors (no recursion, no long
    paths), with a stray file at the bottom."""
    fd = os.open(root, os.O_RDONLY)
    try:
        for _ in range(depth):
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = nfd
        out = os.open("notes.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(out, b"deep\n")
        os.close(out)
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def valid_study(tmp_path_factory) -> Path:
    """One small synthetic DICOM study (96x96, 5 mm slices)."""
    site = write_site(tmp_path_factory.mktemp("site"), small_site("hostile", 2, seed=21))
    return sorted((site / "studies").iterdir())[0]


def _copy(valid_study: Path, where: Path) -> Path:
    return Path(shutil.copytree(valid_study, where))


def _rm_deep(root: Path) -> None:
    """Remove a ``d/d/d/...`` chain without recursion (``shutil.rmtree`` and pytest's clean-up recurse)."""
    while (root / "d" / "d").is_dir():
        flat = root / "_flat"
        os.rename(root / "d" / "d", flat)
        shutil.rmtree(root / "d")
        os.rename(flat, root / "d")
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def answers(tmp_path_factory, valid_study) -> Iterator[dict[str, dict]]:
    """Every hostile input, answered by the child process on both roads (or missing: it blocked)."""
    root = tmp_path_factory.mktemp("hostile")
    inputs: dict[str, Path] = {}

    tiny = root / "tiny.nii"  # 416 bytes declaring 2048 x 2048 x 1024 int16 (8.6 GB)
    tiny.write_bytes(_nifti_header((2048, 2048, 1024), (0.7, 0.7, 1.0)) + b"\0" * 64)
    inputs["nifti_huge_header"] = tiny
    short = root / "short.nii"  # within the voxel budget, but the data is not there
    short.write_bytes(_nifti_header((512, 512, 300), (0.7, 0.7, 1.0)) + b"\0" * 64)
    inputs["nifti_truncated"] = short

    inputs["gz_over_budget"] = _gzip_bomb(
        root / "over.nii.gz", _nifti_header((2048, 2048, 1024), (0.7, 0.7, 1.0)), 1 << 30
    )
    inputs["gz_beyond_header"] = _gzip_bomb(
        root / "beyond.nii.gz", _nifti_header((512, 512, 100), (0.7, 0.7, 1.0)), (1 << 30) + (64 << 20)
    )
    inputs["gz_constant"] = _gzip_bomb(  # declares exactly what it holds: 1 GiB of zero voxels
        root / "zeros.nii.gz", _nifti_header((512, 512, 2048), (0.7, 0.7, 1.0)), 512 * 512 * 2048 * 2
    )
    # 400 mm voxels; 786 MB of int16 voxels whose float32 copy alone would not fit the child's memory
    inputs["nifti_400mm"] = _gzip_bomb(
        root / "huge_voxels.nii.gz", _nifti_header((512, 512, 1500), (400.0, 400.0, 400.0)), 512 * 512 * 1500 * 2
    )
    inputs["nifti_0.001mm"] = _nifti(root / "tiny_voxels.nii.gz", _phantom(), np.diag([0.001, 0.001, 0.001, 1.0]))

    fifo = root / "fifo"
    os.mkfifo(fifo)
    inputs["fifo_study"] = fifo
    zero = root / "zero-link"
    zero.symlink_to("/dev/zero")
    inputs["dev_zero_study"] = zero
    loop_a, loop_b = root / "loop-a", root / "loop-b"
    loop_a.symlink_to(loop_b)
    loop_b.symlink_to(loop_a)
    inputs["link_loop_study"] = loop_a

    specials = _copy(valid_study, root / "specials")  # a FIFO, a link to /dev/zero, a loop: inside
    os.mkfifo(specials / "pipe")
    (specials / "zero").symlink_to("/dev/zero")
    (specials / "loop-x").symlink_to(specials / "loop-y")
    (specials / "loop-y").symlink_to(specials / "loop-x")
    inputs["specials_inside"] = specials

    etc = _copy(valid_study, root / "etc-link")
    (etc / "config").symlink_to("/etc")
    (etc / "passwd").symlink_to("/etc/passwd")
    inputs["etc_link_inside"] = etc

    deep = _copy(valid_study, root / "deep")
    _mkdir_deep(deep, 1200)
    inputs["deep_inside"] = deep
    only_deep = root / "only-deep"
    only_deep.mkdir()
    _mkdir_deep(only_deep, 1200)
    inputs["deep_only"] = only_deep

    stray = _copy(valid_study, root / "stray")
    (stray / "timezone").write_bytes(b"Etc/UTC\n")  # 8 bytes, as a PACS export may leave
    inputs["stray_text"] = stray

    sparse = _copy(valid_study, root / "sparse")
    with (sparse / "ZEROS").open("wb") as fh:
        fh.truncate(1 << 30)  # 1 GiB of zeros, no disk used
    with (sparse / "HUGE").open("wb") as fh:
        fh.truncate(3 << 30)  # over the per-file size limit
    inputs["zeros_inside"] = sparse
    lone = root / "ZEROS64M"
    with lone.open("wb") as fh:
        fh.truncate(64 << 20)
    inputs["zeros_alone"] = lone

    try:
        yield _run_child([(name, str(path)) for name, path in inputs.items()])
    finally:
        _rm_deep(deep)
        _rm_deep(only_deep)


def _run_child(inputs: list[tuple[str, str]]) -> dict[str, dict]:
    """One JSON line per answered input; an input the child never answered (blocked, killed) is absent."""
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(inputs)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )
    try:
        out, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
    lines = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    assert lines and lines[0] == {"ready": True}, f"the child did not start under RLIMIT_AS: {err[-2000:]}"
    return {line["name"]: line for line in lines[1:]}


def _answer(answers: dict[str, dict], name: str) -> dict:
    assert name in answers, f"{name}: no answer (the reader blocked, crashed or ran past {CHILD_TIMEOUT_S} s)"
    got = answers[name]
    for road in ("predict", "cache"):
        assert "crash" not in got[road], got[road]["crash"]
        assert got[road]["seconds"] < FAST_S, (name, road, got[road])
        assert got[road]["rss_kb"] < RSS_LIMIT_KB, (name, road, got[road])
    return got


def _refused(answers: dict[str, dict], name: str, *words: str) -> str:
    got = _answer(answers, name)
    reason = got["predict"]["error"]
    assert reason == got["cache"]["error"], got  # the same reason on both roads
    assert "\n" not in got["predict"]["line"] and "\n" not in reason
    assert all(w.lower() in reason.lower() for w in words), (name, reason)
    return reason


def _read_with_warning(answers: dict[str, dict], name: str, *words: str) -> list[str]:
    got = _answer(answers, name)
    assert "error" not in got["predict"], (name, got["predict"])
    assert "error" not in got["cache"], (name, got["cache"])
    warnings = got["predict"]["warnings"]
    assert got["cache"]["warnings"] == warnings
    for w in words:
        assert any(w.lower() in line.lower() for line in warnings), (name, warnings)
    assert not any("/" in line for line in warnings), warnings  # counts, never paths
    return warnings


# ------------------------------------------------------------------------------ 1. memory from a tiny file
@pytest.mark.slow
def test_tiny_nifti_header_declaring_a_huge_image_is_refused_from_the_header(answers):
    reason = _refused(answers, "nifti_huge_header", "2048 x 2048 x 1024", "over the limit")
    assert f"{MAX_VOXELS / 1e6:.0f} million voxels" in reason
    _refused(answers, "nifti_truncated", "declares", "truncated")


@pytest.mark.slow
def test_gzip_bomb_is_refused_while_inflating_with_a_cap(answers):
    _refused(answers, "gz_over_budget", "over the limit")  # from the header, nothing inflated
    _refused(answers, "gz_beyond_header", "inflates")  # inflated only up to what the header declares
    _refused(answers, "gz_constant", "same value")  # within budget, but no image: never allocated


# ------------------------------------------------------------------------------ 2. preprocessing budgets
@pytest.mark.slow
def test_absurd_nifti_voxel_sizes_are_refused_before_reading_voxels(answers):
    _refused(answers, "nifti_400mm", "voxel size", "field of view")
    _refused(answers, "nifti_0.001mm", "voxel size")


@pytest.mark.parametrize("bad", [np.nan, np.inf, 0.0, 1e-4, 60.0, 400.0])
def test_every_absurd_nifti_voxel_size_is_refused_without_reading_voxels(tmp_path, monkeypatch, bad):
    path = tmp_path / "study.nii"
    nib.save(nib.Nifti1Image(np.zeros((32, 32, 16), np.int16), np.diag([0.8, 0.8, 5.0, 1.0])), str(path))
    hdr = nib.load(str(path)).header.copy()
    affine = np.diag([bad, 0.8, 5.0, 1.0])
    hdr.set_sform(affine, code=1)
    hdr.set_qform(None, code=0)
    with path.open("r+b") as fh:
        fh.write(hdr.binaryblock)
    monkeypatch.setattr(nifti_module.nib, "load", lambda *a, **k: pytest.fail("voxels read before the check"))
    with pytest.raises(StudyError) as err:
        read_study(path)
    assert "voxel size" in err.value.reason and "\n" not in str(err.value)


def _set_pixel_spacing(folder: Path, spacing: float) -> Path:
    for f in folder.rglob("*"):
        if f.is_file():
            try:
                ds = pydicom.dcmread(f)
            except Exception:
                continue
            if "PixelSpacing" in ds:
                ds.PixelSpacing = [spacing, spacing]
                ds.save_as(f)
    return folder


@pytest.mark.parametrize("spacing", [200.0, 2000.0, 0.001, 0.01])
def test_absurd_dicom_pixel_spacing_is_refused_before_decoding_pixels(valid_study, tmp_path, monkeypatch, spacing):
    study = _set_pixel_spacing(_copy(valid_study, tmp_path / "study"), spacing)
    decoded = []
    real_pixels = dicom_module._pixels
    monkeypatch.setattr(dicom_module, "_pixels", lambda geo: decoded.append(1) or real_pixels(geo))
    with pytest.raises(StudyError) as err:
        load_study(study, PreprocessSettings())
    assert not decoded, "pixels were decoded before the geometry was refused"
    assert "field of view" in err.value.reason and "\n" not in str(err.value)


def test_the_resampled_grid_is_checked_from_headers_before_decoding(valid_study, tmp_path, monkeypatch):
    """A plausible voxel size but a grid the resampler could not hold (a settings' spacing of 0.1 mm)."""
    decoded = []
    real_pixels = dicom_module._pixels
    monkeypatch.setattr(dicom_module, "_pixels", lambda geo: decoded.append(1) or real_pixels(geo))
    fine = PreprocessSettings(spacing_mm=(0.1, 0.1, 0.1))
    with pytest.raises(StudyError, match="field of view"):
        load_study(valid_study, fine)
    assert not decoded


# ------------------------------------------------------------------------------ 3. special files, links
@pytest.mark.slow
def test_fifo_and_device_study_paths_are_refused_without_opening_them(answers):
    _refused(answers, "fifo_study", "FIFO")
    _refused(answers, "dev_zero_study", "device")


@pytest.mark.slow
def test_fifos_devices_and_loops_inside_a_study_are_skipped_with_a_warning(answers):
    _read_with_warning(answers, "specials_inside", "FIFO, socket or device", "dangling or looping")


@pytest.mark.slow
def test_links_out_of_the_study_are_not_followed(answers):
    _read_with_warning(answers, "etc_link_inside", "leading out of the study")


def test_walker_and_hashing_never_open_what_the_walk_did_not_return(valid_study, tmp_path, monkeypatch):
    from fedaaa.common import cache as cache_module

    study = _copy(valid_study, tmp_path / "study")
    os.mkfifo(study / "pipe")
    (study / "out").symlink_to("/etc/hostname")
    first = sorted(p for p in study.iterdir() if p.is_file() and not p.is_symlink())[0]
    (study / "inside-link").symlink_to(first)  # a link to a file of the study: followed
    (study / "inside-folder").symlink_to(study)  # a link to a folder: never followed (no cycle)
    found = walk.walk_study(study)
    names = [p.name for p in found.files]
    assert "inside-link" in names and "pipe" not in names and "out" not in names
    assert not any("inside-folder" in p.parts for p in found.files)
    assert found.skipped == {"special": 1, "outside": 1, "linked-folder": 1}
    opened: list[str] = []
    real_open = walk.open_regular
    monkeypatch.setattr(walk, "open_regular", lambda p: opened.append(Path(p).name) or real_open(p))
    monkeypatch.setattr(cache_module, "open_regular", walk.open_regular)
    cache_module.content_digest(study)
    assert set(opened) <= set(names)


def test_too_many_entries_refuse_the_study_in_one_line(tmp_path, monkeypatch):
    monkeypatch.setattr(walk, "MAX_ENTRIES", 5)
    for i in range(6):
        (tmp_path / f"f{i}").write_bytes(b"x")
    with pytest.raises(StudyError, match="more than 5 entries"):
        read_study(tmp_path)


# ------------------------------------------------------------------------------ 4. depth, link loops
@pytest.mark.slow
def test_a_study_path_that_is_a_link_loop_is_refused_in_one_line(answers):
    _refused(answers, "link_loop_study", "symbolic link loop")


@pytest.mark.slow
def test_folders_nested_1200_deep_are_not_searched_and_do_not_crash(answers):
    _read_with_warning(answers, "deep_inside", f"deeper than {walk.MAX_DEPTH} levels")
    _refused(answers, "deep_only", "no readable DICOM files", f"deeper than {walk.MAX_DEPTH} levels")


# ------------------------------------------------------------------------------ 9. stray files
@pytest.mark.slow
def test_small_stray_text_file_is_skipped_with_a_warning(answers):
    _read_with_warning(answers, "stray_text", "ignored 1 non-DICOM file")


@pytest.mark.slow
def test_a_gigabyte_of_zeros_inside_a_study_is_skipped_fast(answers):
    warnings = _read_with_warning(answers, "zeros_inside", "ignored 1 non-DICOM file", "over the 2 GiB size limit")
    assert len(warnings) >= 2
    _refused(answers, "zeros_alone", "neither a DICOM file nor a NIfTI")


def test_a_stray_is_only_sniffed_never_parsed(tmp_path, monkeypatch):
    """A file without the DICOM preamble that does not start with a DICOM element tag is never handed
    to pydicom: 132 bytes read, whatever its size."""
    stray = tmp_path / "stray"
    with stray.open("wb") as fh:
        fh.write(b"Etc/UTC\n")
        fh.truncate(256 << 20)
    parsed = []
    monkeypatch.setattr(dicom_module.pydicom, "dcmread", lambda *a, **k: parsed.append(a) or pytest.fail("parsed"))
    t0 = time.monotonic()
    assert dicom_module._read_header(stray) is None
    assert not parsed and time.monotonic() - t0 < 1.0


def test_a_torn_dicom_file_with_its_magic_still_refuses_the_study(valid_study, tmp_path):
    """Strays are skipped; a slice of the measured series that is DICOM (preamble and DICM) but torn is
    not a stray: it refuses the study, as before."""
    study = _copy(valid_study, tmp_path / "study")
    victim = sorted(p for p in study.rglob("*") if p.is_file())[3]
    victim.write_bytes(victim.read_bytes()[: int(victim.stat().st_size * 0.6)])
    with pytest.raises(StudyError, match="cannot be decoded|truncated|corrupt"):
        read_study(study)


def test_content_digest_sees_a_changed_dicom_file_and_a_changed_stray_head(valid_study, tmp_path):
    from fedaaa.common.cache import content_digest

    study = _copy(valid_study, tmp_path / "study")
    (study / "notes").write_bytes(b"Etc/UTC\n")
    before = content_digest(study)
    (study / "notes").write_bytes(b"\x08\x00\x05\x00CS\n\x00ISO_IR 100")  # now starts like a DICOM element
    assert content_digest(study) != before


def _deflated_bomb(path: Path, template: Path, inflated: int) -> Path:
    """A CT file whose Deflated Explicit VR dataset is the template's header plus ``inflated`` bytes of
    zero pixels: the raw deflate stream is built in 16 MiB chunks, so the test never holds the payload."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset, write_file_meta_info

    ds = pydicom.dcmread(template)
    del ds.PixelData
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    head = DicomBytesIO()
    head.is_little_endian, head.is_implicit_VR = True, False
    write_dataset(head, ds)
    pixel_tag = b"\xe0\x7f\x10\x00OW\x00\x00" + inflated.to_bytes(4, "little")  # (7FE0,0010) OW, 4-byte length
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    meta = DicomBytesIO()
    meta.is_little_endian, meta.is_implicit_VR = True, False
    write_file_meta_info(meta, ds.file_meta)
    with path.open("wb") as fh:
        fh.write(b"\0" * 128 + b"DICM" + meta.getvalue())
        fh.write(deflater.compress(head.getvalue() + pixel_tag))
        block = b"\0" * (16 << 20)
        for _ in range(inflated // len(block)):
            fh.write(deflater.compress(block))
        fh.write(deflater.flush())
    return path


def test_a_deflated_dicom_bomb_is_refused_while_inflating_with_a_cap(valid_study, tmp_path):
    study = _copy(valid_study, tmp_path / "study")
    template = next(f for f in sorted(study.rglob("*")) if f.is_file() and "PixelData" in pydicom.dcmread(f))
    bomb = _deflated_bomb(template, template, 256 << 20)  # a ~0.3 MB file that inflates to 256 MiB
    assert bomb.stat().st_size < 4 << 20
    t0 = time.monotonic()
    with pytest.raises(StudyError) as err:
        read_study(study)
    assert time.monotonic() - t0 < FAST_S
    assert "decompression bomb" in err.value.reason and "\n" not in str(err.value)


def test_a_genuine_deflated_dicom_file_still_reads(valid_study, tmp_path):
    study = _copy(valid_study, tmp_path / "study")
    reference = read_study(study)
    for f in sorted(study.rglob("*")):
        if f.is_file() and "PixelData" in (ds := pydicom.dcmread(f)):
            ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
            ds.save_as(f, enforce_file_format=True)
    again = read_study(study)
    np.testing.assert_array_equal(again.hu, reference.hu)
