"""Hostile inputs to `fedaaa site check` and `fedaaa predict`: one answer per input, one line per error,
nothing private in the shareable summary, nothing that acts on a terminal.

Each test stands for a class of defect: a manifest path that would hang or escape the site (FIFO, device,
symlink loop, outside the site); a manifest or SITE that used to raise a traceback (a field over the csv
module's 128 KiB, bytes that are not UTF-8, a symlink loop, an unforeseen exception); rich markup in a
study id or header; header text (a name, a 60 kB value) reaching the summary; and a file name carrying
escape sequences or a newline into `predict`'s text output.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pydicom
import pytest

from fedaaa.cli import main
from fedaaa.common.cache import InputCache
from fedaaa.common.site import Site, study_path_problem
from fedaaa.common.site_check import (
    OTHER,
    REFUSAL_CATEGORIES,
    SYNTHETIC_VENDORS,
    UNKNOWN,
    VENDORS,
    WARNING_CATEGORIES,
    refusal_category,
    vendor,
)
from fedaaa.common.text import printable

HOSTILE_NAME = "study\x1b]0;owned\x07\x1b[2K\x1b[1A\rFAKE LINE: AAA present, 9.9 cm\n\u202e"
ESCAPES = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\u202e]")  # any control character but \t and \n
REFUSALS = {name for name, _ in REFUSAL_CATEGORIES} | {OTHER}
VENDOR_NAMES = {name for name, _ in VENDORS} | set(SYNTHETIC_VENDORS) | {OTHER, UNKNOWN}


@pytest.fixture(scope="module")
def shared_cache(tmp_path_factory) -> Path:
    """One cache for the module: copies of the same studies are decoded once."""
    return tmp_path_factory.mktemp("hostile-cache")


def _site(tiny_federation: list[Path], where: Path, n: int = 3) -> tuple[Path, list[dict[str, str]]]:
    """A copy of the first synthetic site whose manifest keeps only its first ``n`` studies."""
    site = where / "site"
    shutil.copytree(tiny_federation[0], site)
    with (site / "manifest.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))[:n]
    _write_manifest(site, rows)
    return site, rows


def _write_manifest(site: Path, rows: list[dict[str, str]]) -> None:
    columns = ["study_id", "path", "aaa", "max_diameter_mm", "split", "sex"]
    with (site / "manifest.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, columns, extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({"split": "train", "sex": "", **row})


def _row(study_id: str, path: str) -> dict[str, str]:
    return {"study_id": study_id, "path": path, "aaa": "0", "max_diameter_mm": "20"}


def _check(site: Path, cache: Path, capsys, *extra: str) -> tuple[int, str, str]:
    code = main(["site", "check", str(site), "--workers", "1", "--cache-dir", str(cache), *extra])
    out, err = capsys.readouterr()
    return code, out, err


def _one_line_error(code: int, err: str) -> None:
    assert code == 2, err
    assert err.startswith("error:") and err.count("\n") == 1 and "Traceback" not in err, err
    assert not ESCAPES.search(err), err
    assert len(err) < 700, len(err)


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.startswith("."))


def _edit_headers(folder: Path, edit, first_only: bool = False) -> None:
    for f in _dicom_files(folder):
        try:
            ds = pydicom.dcmread(f)
        except Exception:
            continue  # stray files of the synthetic export
        if getattr(ds, "Modality", "") != "CT" or "PixelData" not in ds:
            continue
        edit(ds)
        ds.save_as(f)
        if first_only:
            return


# ------------------------------------------------------------- 3. a manifest path that hangs or escapes
def test_manifest_path_is_checked_before_any_byte_is_read(tmp_path, tiny_federation):
    """FIFO, device, symlink to /dev/zero, symlink loop, outside the site: each refused at once, in one line."""
    site, _ = _site(tiny_federation, tmp_path, n=1)
    outside = tmp_path / "outside"
    outside.mkdir()
    os.mkfifo(site / "fifo")
    (site / "zero").symlink_to("/dev/zero")
    (site / "loop-a").symlink_to(site / "loop-b")
    (site / "loop-b").symlink_to(site / "loop-a")
    (site / "escape").symlink_to(outside)
    (site / "broken").symlink_to(site / "nowhere")
    for name in ("fifo", "zero", "loop-a", "escape", "broken"):
        problem = study_path_problem(site / name, site)
        assert problem.startswith("unsafe path") and "\n" not in problem, (name, problem)
    assert study_path_problem("/dev/null", None).startswith("unsafe path")  # predict: no site root
    assert study_path_problem(site / "missing", site) == "study path does not exist"
    assert study_path_problem(site / "studies", site) == ""


@pytest.mark.slow
def test_site_check_refuses_hazardous_rows_without_hanging(tmp_path, tiny_federation, shared_cache):
    """Run as a process with a timeout: reading a FIFO or /dev/zero used to hang the check for ever."""
    site, rows = _site(tiny_federation, tmp_path, n=1)
    os.mkfifo(site / "fifo")
    (site / "zero").symlink_to("/dev/zero")
    (site / "loop").symlink_to(site / "loop")
    (site / "escape").symlink_to(tiny_federation[1] / "studies")
    hazards = {
        "h-fifo": "fifo",
        "h-zero": "zero",
        "h-loop": "loop",
        "h-escape": "escape",
        "h-absolute": "/dev/zero",
        "h-dotdot": "../outside",
        "h-self": ".",
        "h-newline": "studies\n\x1b[2Kx",
        "h-missing": "studies/none",
    }
    _write_manifest(site, rows + [_row(k, v) for k, v in hazards.items()])
    res = subprocess.run(
        [sys.executable, "-m", "fedaaa.cli", "site", "check", str(site), "--json", "--workers", "1"]
        + ["--cache-dir", str(shared_cache)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    report = json.loads(res.stdout)
    status = {r["study_id"]: r for r in report["studies"]}
    assert status[rows[0]["study_id"]]["status"] == "usable"
    for study_id in hazards:
        entry = status[study_id]
        assert entry["status"] == "refused" and "\n" not in entry["reason"] and not ESCAPES.search(entry["reason"])
    for study_id in set(hazards) - {"h-missing"}:
        assert status[study_id]["reason"].startswith("unsafe path"), status[study_id]
    assert report["summary"]["refusal_reasons"] == {"unsafe path": len(hazards) - 1, "study not found": 1}


# --------------------------------------------------------------------------- 4. tracebacks
def test_hostile_manifests_are_one_line_errors(tmp_path, tiny_federation, capsys):
    site, rows = _site(tiny_federation, tmp_path)
    manifest = site / "manifest.csv"
    header = "study_id,path,aaa,max_diameter_mm\n"
    cases = {
        "field over 128 KiB": (header + "s1," + "x" * (200 * 1024) + ",0,20\n").encode(),
        "bytes not UTF-8": header.encode() + b"s1,studies/\xff\xfe\x80,0,20\n",
        "Latin-1 study id": header.encode() + "s\u00e9,studies/a,0,20\n".encode("latin-1"),
        "huge aaa value": (header + "s1,studies/a," + "\x1b[31m" * 5000 + ",20\n").encode(),
        "no header at all": b"",
    }
    for name, data in cases.items():
        manifest.write_bytes(data)
        code, _, err = _check(site, tmp_path / "cache", capsys)
        _one_line_error(code, err)
        if name != "no header at all":
            assert "line 2" in err, (name, err)
    manifest.write_bytes(b"")
    with manifest.open("r+b") as fh:  # 65 MB, sparse: the manifest is refused before it is read
        fh.truncate(65 * 2**20)
    _one_line_error(*_check(site, tmp_path / "cache", capsys)[::2])
    manifest.unlink()
    os.mkfifo(manifest)  # a FIFO manifest: refused, never opened (opening it would block)
    _one_line_error(*_check(site, tmp_path / "cache", capsys)[::2])
    manifest.unlink()
    manifest.symlink_to("/dev/zero")
    _one_line_error(*_check(site, tmp_path / "cache", capsys)[::2])


def test_hostile_site_arguments_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "loop").symlink_to(tmp_path / "loop")
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "file").write_text("not a folder")
    (tmp_path / "zero").symlink_to("/dev/zero")
    for name in ("loop", "fifo", "file", "zero", "missing", "loop/below", "bad\x1b[2J\nname"):
        code, _, err = _check(tmp_path / name, tmp_path / "cache", capsys)
        _one_line_error(code, err)


def test_one_failing_study_never_ends_the_check(tmp_path, tiny_federation, shared_cache, capsys, monkeypatch):
    """A study path that is a symlink loop, and a study whose preparation raises what nothing foresaw:
    both refused, every other study checked."""
    site, rows = _site(tiny_federation, tmp_path, n=3)
    (site / "loop").symlink_to(site / "loop")
    _write_manifest(site, rows + [_row("looping", "loop")])
    victim = rows[1]["path"]
    real_key = InputCache.key

    def key(self, path, rehash=False, mask=None):
        if Path(path).name == Path(victim).name:
            raise RuntimeError("nobody foresaw this")
        return real_key(self, path, rehash=rehash, mask=mask)

    monkeypatch.setattr(InputCache, "key", key)
    code, out, err = _check(site, shared_cache, capsys, "--json")
    assert code == 0, err
    status = {r["study_id"]: r for r in json.loads(out)["studies"]}
    assert status["looping"]["status"] == "refused" and "symlink loop" in status["looping"]["reason"]
    assert status[rows[1]["study_id"]]["status"] == "refused"
    assert "RuntimeError" in status[rows[1]["study_id"]]["reason"]
    assert status[rows[0]["study_id"]]["status"] == status[rows[2]["study_id"]]["status"] == "usable"


def test_an_unforeseen_failure_of_a_command_is_one_line(tmp_path, tiny_federation, capsys, monkeypatch):
    site, _ = _site(tiny_federation, tmp_path, n=1)

    def explode(*_args, **_kwargs):
        raise ValueError("an unforeseen failure\nwith a second line \x1b[2J")

    monkeypatch.setattr("fedaaa.common.site_check.check_site", explode)
    _one_line_error(*_check(site, tmp_path / "cache", capsys)[::2])
    with pytest.raises(ValueError):  # --debug shows the traceback
        main(["--debug", "site", "check", str(site), "--cache-dir", str(tmp_path / "cache")])


# --------------------------------------------------------------------------- 5. rich markup
def test_markup_in_study_ids_and_headers_is_shown_not_interpreted(tmp_path, tiny_federation, shared_cache, capsys):
    site, rows = _site(tiny_federation, tmp_path, n=2)
    (site / "studies" / "empty").mkdir()
    rows[0]["study_id"] = "[red]x[/]"
    _write_manifest(site, rows + [_row("[/bold]", "studies/empty")])
    folder = site / rows[0]["path"]

    def mark(ds):
        ds.Manufacturer = "[/bold]"

    _edit_headers(folder, mark)
    slices = sorted(
        (f for f in _dicom_files(folder) if getattr(pydicom.dcmread(f, force=True), "Modality", "") == "CT"),
        key=lambda f: float(pydicom.dcmread(f).ImagePositionPatient[2]),
    )
    slices[len(slices) // 2].unlink()  # a missing slice: the study is usable, with a warning
    code, out, err = _check(site, shared_cache, capsys)
    assert code == 0, err
    assert "[/bold]" in out and "[red]x[/]" in out and "interpolated 1 missing slice" in out
    assert "other: 1" in out  # the manufacturer "[/bold]" is no known vendor


# --------------------------------------------------------------------------- 7. header text in the summary
def test_header_text_never_reaches_the_summary(tmp_path, tiny_federation, shared_cache, capsys):
    site, rows = _site(tiny_federation, tmp_path, n=5)
    name = "DOE^JOHN 1970-01-01 MRN 123456"
    folders = [site / r["path"] for r in rows]

    def slope(ds):
        ds["RescaleSlope"] = pydicom.DataElement(0x00281053, "LO", name)

    def huge(ds):
        ds["RescaleIntercept"] = pydicom.DataElement(0x00281052, "UT", "Q" * 60_000)

    def maker(ds):
        ds.Manufacturer = f"{name}\x1b[31m"

    def siemens(ds):
        ds.Manufacturer = "SIEMENS Healthineers"

    def described(ds):
        ds.SeriesDescription = f"{name}\x1b]0;t\x07"

    _edit_headers(folders[0], slope, first_only=True)
    _edit_headers(folders[1], huge, first_only=True)
    _edit_headers(folders[2], maker)
    _edit_headers(folders[3], siemens)
    _edit_headers(folders[4], described)
    code, out, err = _check(site, shared_cache, capsys, "--json")
    assert code == 0, err
    report = json.loads(out)
    summary = report["summary"]
    text = json.dumps(summary)
    for private in ("DOE", "JOHN", "MRN", "123456", "1970", "QQQ", "RescaleSlope"):
        assert private not in text, (private, text)
    assert len(text) < 4000
    assert summary["refusal_reasons"] == {"invalid header value": 2}
    assert set(summary["refusal_reasons"]) <= REFUSALS
    assert set(summary["warnings"]) <= {name for name, _ in WARNING_CATEGORIES} | {OTHER}
    assert summary["manufacturers"] == {"SYNTH": 1, "other": 1, "Siemens": 1}
    assert set(summary["manufacturers"]) <= VENDOR_NAMES
    status = {r["study_id"]: r for r in report["studies"]}
    huge_reason = status[rows[1]["study_id"]]["reason"]
    assert "RescaleIntercept" in huge_reason and len(huge_reason) <= 500  # the site's own eyes: capped
    assert not any(ESCAPES.search(json.dumps(r, ensure_ascii=False)) for r in report["studies"])


def test_categories_and_vendors_come_from_fixed_lists():
    assert refusal_category("invalid RescaleSlope 'DOE^JOHN 1970-01-01 MRN 123456'") == "invalid header value"
    assert refusal_category("invalid RescaleSlope 'only 3 slices Hounsfield'") == "invalid header value"
    assert refusal_category("no CT image series (found modality MR)") == "not CT"
    assert refusal_category("only 1 CT slice; a volume needs at least 8") == "too few slices"
    assert refusal_category("something new " + "x" * 1000) == OTHER
    assert vendor("GE MEDICAL SYSTEMS") == "GE" and vendor("Philips Medical Systems") == "Philips"
    assert vendor("TOSHIBA") == vendor("Canon Medical Systems") == "Canon/Toshiba"
    assert vendor("DOE^JOHN") == vendor("General Hospital Geneva") == OTHER
    assert vendor("") == UNKNOWN and vendor("synth") == "SYNTH"
    assert printable("a\x1b[31mb\nc" + "d" * 200, 20) == "a\\x1b[31mb cddddddd…"


# --------------------------------------------------------------------------- 8. terminal injection
@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    from fedaaa.common.config import PREPROCESS
    from fedaaa.common.model import AortaNet, ModelFile, save_model

    return save_model(tmp_path_factory.mktemp("model") / "untrained.safetensors", ModelFile(AortaNet(), PREPROCESS))


def test_predict_text_output_never_carries_control_sequences(tmp_path, tiny_federation, model_file, capsys):
    good = tmp_path / HOSTILE_NAME
    shutil.copytree(Site(tiny_federation[0]).studies[0].path, good)
    empty = tmp_path / ("empty" + HOSTILE_NAME)
    empty.mkdir()
    undecodable = tmp_path / os.fsdecode(b"bytes-\xff\xfe")
    undecodable.mkdir()
    paths = [str(good), str(empty), str(undecodable)]
    code = main(["predict", "--model", str(model_file), *paths])
    out, err = capsys.readouterr()
    assert code == 2, err
    assert not ESCAPES.search(out + err), out
    lines = out.splitlines()
    assert not any(line.lstrip().startswith("FAKE LINE") for line in lines), out
    assert sum(line.startswith(str(tmp_path)) for line in lines) == 3, out
    assert "\\x1b]0;owned\\x07" in out and "\\n" in out and "\\xff\\xfe" in out
    code = main(["predict", "--json", "--model", str(model_file), *paths])
    out = capsys.readouterr().out
    answers = [json.loads(line) for line in out.splitlines()]
    assert [a["input"] for a in answers] == paths and "error" not in answers[0] and "error" in answers[1]
    assert not ESCAPES.search(answers[1]["error"])


def test_predict_answers_every_input_even_after_an_unforeseen_failure(
    tmp_path, tiny_federation, model_file, capsys, monkeypatch
):
    studies = [str(s.path) for s in Site(tiny_federation[0]).studies[:2]]
    from fedaaa.common import predict as predict_module

    real = predict_module.load_study_input

    def flaky(path, settings, mask=None):
        if str(path) == studies[0]:
            raise RuntimeError("nobody foresaw this\nsecond line")
        return real(path, settings, mask)

    monkeypatch.setattr(predict_module, "load_study_input", flaky)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    code = main(["predict", "--json", "--model", str(model_file), studies[0], str(fifo), studies[1]])
    out, err = capsys.readouterr()
    assert code == 2 and "Traceback" not in err, err
    answers = [json.loads(line) for line in io.StringIO(out)]
    assert [a["input"] for a in answers] == [studies[0], str(fifo), studies[1]]
    assert "RuntimeError" in answers[0]["error"] and "\n" not in answers[0]["error"]
    assert answers[1]["error"].endswith("unsafe path: the study path is a FIFO, not a regular file or a folder")
    assert "error" not in answers[2]


def test_predict_report_dir_writes_pictures_and_an_index(tmp_path, tiny_federation, model_file, capsys):
    """``--report-dir``: per study the overview (and the cross-section when measured), an index naming each input
    (escaped) and linking its pictures; a refused input is listed with its reason."""
    study = str(Site(tiny_federation[0]).studies[0].path)
    empty = tmp_path / "<b>empty&"
    empty.mkdir()
    report = tmp_path / "report"
    code = main(["predict", "--json", "--model", str(model_file), study, str(empty), "--report-dir", str(report)])
    out, _ = capsys.readouterr()
    answers = [json.loads(line) for line in io.StringIO(out)]
    assert code == 2 and [a["input"] for a in answers] == [study, str(empty)]
    files = answers[0]["report"]
    assert files["overview"] and (report / files["overview"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    if answers[0]["measurable"]:
        assert (report / files["section"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    page = (report / "index.html").read_text()
    assert f'href="{files["overview"]}"' in page and "&lt;b&gt;empty&amp;" in page and "<b>empty" not in page
    assert "refused" in page and "empty folder" in page
