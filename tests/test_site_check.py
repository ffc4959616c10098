"""`fedaaa site check`, the content-keyed cache and parallel decoding."""

from __future__ import annotations

import csv
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pydicom
import pytest

from fedaaa.cli import main
from fedaaa.common.cache import InputCache
from fedaaa.common.config import PREPROCESS
from fedaaa.common.site import Site


def _slices(folder: Path) -> list[Path]:
    return sorted(
        folder.iterdir(), key=lambda f: float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2])
    )


@pytest.fixture(scope="module")
def broken_site(tiny_federation, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A copy of a synthetic site where four studies are broken in different ways."""
    site = tmp_path_factory.mktemp("broken") / "hospital"
    shutil.copytree(tiny_federation[0], site)
    ids = [s.study_id for s in Site(site).studies]
    folder = lambda i: site / "studies" / ids[i]  # noqa: E731
    for f in _slices(folder(0))[1:]:
        f.unlink()
    victim = _slices(folder(1))[7]
    victim.write_bytes(victim.read_bytes()[:-5000])  # torn during export
    shutil.rmtree(folder(2))
    folder(2).mkdir()
    for f in folder(3).iterdir():
        ds = pydicom.dcmread(f)
        ds.Modality = "MR"
        ds.save_as(f)
    expected = {
        ids[0]: "only 1 CT slice",
        ids[1]: "pixel data cannot be decoded",
        ids[2]: "empty folder",
        ids[3]: "no CT image series (found modality MR)",
    }
    return site, expected


@pytest.mark.slow
def test_site_check_lists_each_broken_study_and_the_rest_as_usable(broken_site, tmp_path, capsys):
    site, expected = broken_site
    code = main(["site", "check", str(site), "--json", "--workers", "2", "--cache-dir", str(tmp_path)])
    report = json.loads(capsys.readouterr().out)
    assert code == 0
    status = {r["study_id"]: r for r in report["studies"]}
    assert len(status) == 10
    for study_id, reason in expected.items():
        assert status[study_id]["status"] == "refused" and reason in status[study_id]["reason"], status[study_id]
    assert all(r["status"] == "usable" for sid, r in status.items() if sid not in expected)
    summary = report["summary"]
    assert (summary["studies"], summary["usable"], summary["refused"]) == (10, 6, 4)
    assert sum(summary["refusal_reasons"].values()) == 4
    truth = {r["study_id"]: r for r in csv.DictReader((site / "manifest.csv").open())}
    usable_aaa = sum(int(truth[s]["aaa"]) for s in status if s not in expected)
    assert summary["labels"]["aaa"] == usable_aaa and summary["labels"]["no_aaa"] == 6 - usable_aaa
    assert summary["slice_spacing_mm"]["min"] == summary["slice_spacing_mm"]["max"] == 5.0
    assert summary["manufacturers"] == {"SYNTH": 6}
    # the shareable part names no study, path or patient
    text = json.dumps(summary)
    assert not any(sid in text for sid in status) and str(site) not in text and "Synthetic^" not in text


def test_site_check_human_report_and_refusals(broken_site, tmp_path, capsys):
    site, expected = broken_site
    assert main(["site", "check", str(site), "--cache-dir", str(tmp_path), "--workers", "1"]) == 0
    out = capsys.readouterr().out
    assert "6 of 10 studies usable" in out
    for study_id in expected:
        assert study_id in out
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "manifest.csv").write_text("study_id,path,aaa,max_diameter_mm\ns1,x,2,40\n")
    assert main(["site", "check", str(tmp_path / "bad")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "line 2" in err and "aaa must be 0 or 1" in err and err.count("\n") == 1


@pytest.mark.slow
def test_cached_round_skips_decoding_and_content_changes_are_seen(tiny_federation, tmp_path):
    site = Site(tiny_federation[1])
    first = InputCache(PREPROCESS, tmp_path)
    a = site.load("train", PREPROCESS, first, workers=2)
    assert first.decoded == len(site.split("train"))
    again = InputCache(PREPROCESS, tmp_path)
    b = site.load("train", PREPROCESS, again, workers=2)
    assert again.decoded == 0  # a cached round reads no DICOM at all
    for x, y in zip(a.data.images, b.data.images, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    sequential = site.load("train", PREPROCESS, InputCache(PREPROCESS, tmp_path / "seq"), workers=1)
    for x, y in zip(a.data.images, sequential.data.images, strict=True):
        np.testing.assert_array_equal(x.numpy(), y.numpy())
    # same size, same modification time, different bytes: still a new key
    study = site.split("train")[0].path
    copy = tmp_path / "copy"
    shutil.copytree(study, copy)
    cache = InputCache(PREPROCESS, tmp_path)
    key = cache.key(copy)
    victim = sorted(copy.iterdir())[0]
    st = victim.stat()
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0xFF
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert cache.key(copy) != key
    cache.load(copy)
    assert cache.decoded == 1
