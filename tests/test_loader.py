"""One road from a study to the network input (``load_study``), typed study facts, and the content index.

``fedaaa predict --json`` must answer exactly one JSON line per input, in order, whatever the input: a
damaged study (truncated or overwritten bytes, deleted slices, an absurd PixelSpacing or NIfTI voxel size
that would make the resampler ask for terabytes) is that input's ``error``, never a traceback. A round on
an unchanged site hashes no byte; a changed file is hashed again; ``site check`` hashes everything.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from fedaaa.cli import main
from fedaaa.common import cache as cache_module
from fedaaa.common.cache import ContentIndex, InputCache
from fedaaa.common.config import PREPROCESS
from fedaaa.common.io import StudyInfo, read_study
from fedaaa.common.model import AortaNet, ModelFile, save_model
from fedaaa.common.site import Site
from fedaaa.common.site_check import check_site


def _dicom_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.rglob("*") if f.is_file() and not f.name.startswith("."))


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    return save_model(tmp_path_factory.mktemp("model") / "untrained.safetensors", ModelFile(AortaNet(), PREPROCESS))


@pytest.fixture(scope="module")
def base_study(tiny_federation) -> Path:
    return Site(tiny_federation[0]).studies[0].path


@pytest.fixture(scope="module")
def base_volume(base_study):
    return read_study(base_study)


# ------------------------------------------------------------------------------ damaged studies
def _damage(base: Path, volume, damage: tuple, where: Path) -> Path:
    """A damaged copy of ``base`` (or a NIfTI file, or no file at all) under ``where``."""
    kind = damage[0]
    if kind == "missing":
        return where / "no-such-study"
    if kind == "nifti_zoom":  # a converted study whose voxel size is absurd
        path = where / "study.nii.gz"
        affine = volume.affine @ np.diag([damage[1], damage[1], 1.0, 1.0])
        nib.save(nib.Nifti1Image(np.rint(volume.hu).astype(np.int16), affine), str(path))
        return path
    folder = where / "study"
    shutil.copytree(base, folder)
    files = _dicom_files(folder)
    if kind == "truncate":
        victim = files[damage[1] % len(files)]
        data = victim.read_bytes()
        victim.write_bytes(data[: int(len(data) * damage[2])])
    elif kind == "overwrite":
        victim = files[damage[1] % len(files)]
        data = bytearray(victim.read_bytes())
        at = int((len(data) - 1) * damage[2])
        data[at : at + len(damage[3])] = damage[3]
        victim.write_bytes(bytes(data[: len(data)]))
    elif kind == "delete":
        for i in sorted({i % len(files) for i in damage[1]}):
            files[i].unlink()
    elif kind == "pixel_spacing":  # every slice says so: a consistent but absurd geometry
        for f in files:
            ds = pydicom.dcmread(f)
            ds.PixelSpacing = [damage[1], damage[1]]
            ds.save_as(f)
    return folder


DAMAGES = st.one_of(
    st.just(("intact",)),
    st.just(("missing",)),
    st.tuples(st.just("truncate"), st.integers(0, 10**6), st.floats(0.0, 0.95)),
    st.tuples(st.just("overwrite"), st.integers(0, 10**6), st.floats(0.0, 1.0), st.binary(min_size=1, max_size=64)),
    st.tuples(st.just("delete"), st.lists(st.integers(0, 10**6), min_size=1, max_size=40)),
    st.tuples(st.just("pixel_spacing"), st.sampled_from([2000.0, 5000.0, 40000.0])),
    st.tuples(st.just("nifti_zoom"), st.sampled_from([1000.0, 20000.0])),
)


@settings(
    max_examples=15,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@pytest.mark.slow
@example(damages=[("pixel_spacing", 2000.0), ("intact",), ("nifti_zoom", 1000.0)])
@given(damages=st.lists(DAMAGES, min_size=1, max_size=3))
def test_predict_answers_one_json_line_per_damaged_input(damages, base_study, base_volume, model_file, capsys):
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, damage in enumerate(damages):
            (Path(tmp) / str(i)).mkdir()
            paths.append(_damage(base_study, base_volume, damage, Path(tmp) / str(i)))
        code = main(["predict", "--json", "--model", str(model_file), *map(str, paths)])
        out, err = capsys.readouterr()
    assert "Traceback" not in out + err, err
    lines = out.splitlines()
    assert len(lines) == len(paths), (damages, out, err)
    answers = [json.loads(line) for line in lines]
    assert [a["input"] for a in answers] == [str(p) for p in paths]
    for damage, answer in zip(damages, answers):
        if "error" in answer:
            assert isinstance(answer["error"], str) and answer["error"].strip() and "\n" not in answer["error"]
            assert damage[0] != "intact", answer
        else:
            assert damage[0] not in ("missing", "pixel_spacing", "nifti_zoom"), answer
            if answer["measurable"]:
                assert 0.0 <= answer["aaa_probability"] <= 1.0 and math.isfinite(answer["max_diameter_mm"])
            else:  # an untrained network: the answer says why there is no number
                assert answer["reason"] and answer["max_diameter_mm"] is None
    assert code == (2 if any("error" in a for a in answers) else 0)


def test_training_and_predict_refuse_a_study_for_the_same_reason(base_study, base_volume, model_file, tmp_path, capsys):
    study = _damage(base_study, base_volume, ("pixel_spacing", 2000.0), tmp_path)
    cache = InputCache(PREPROCESS, tmp_path / "cache")
    _, outcome = cache.prepare(study)
    assert outcome.info is None and "field of view" in outcome.error
    assert main(["predict", "--json", "--model", str(model_file), str(study)]) == 2
    answer = json.loads(capsys.readouterr().out)
    assert answer["error"] == f"{study.resolve()}: {outcome.error}" or answer["error"].endswith(outcome.error)
    assert not any(p.suffix == ".npy" for p in (tmp_path / "cache").iterdir())


# ------------------------------------------------------------------------------ typed study facts
def test_study_facts_round_trip_exactly(base_volume, tmp_path):
    info = base_volume.info
    assert isinstance(info, StudyInfo) and info.format == "dicom" and info.shape == base_volume.hu.shape
    assert StudyInfo.from_json(info.to_json()) == info
    raw = json.loads(info.to_json())
    with pytest.raises(TypeError):
        StudyInfo.from_dict({k: v for k, v in raw.items() if k != "warnings"})  # an older record: refused
    with pytest.raises(TypeError):
        StudyInfo.from_dict({**raw, "spacing": 1.0})
    nii = tmp_path / "s.nii.gz"
    nib.save(nib.Nifti1Image(np.rint(base_volume.hu).astype(np.int16), base_volume.affine), str(nii))
    again = read_study(nii).info
    assert again.format == "nifti" and again.n_slices == info.n_slices
    assert again.slice_spacing_mm == pytest.approx(info.slice_spacing_mm, abs=1e-3)
    assert StudyInfo.from_json(again.to_json()) == again


# ------------------------------------------------------------------------------ the content index
def test_unchanged_site_is_not_hashed_again_but_changes_and_site_check_are(tiny_federation, tmp_path, monkeypatch):
    root = shutil.copytree(tiny_federation[1], tmp_path / "site")
    site = Site(root)
    hashed: list[Path] = []
    digest = cache_module.content_digest
    monkeypatch.setattr(cache_module, "content_digest", lambda p: hashed.append(Path(p)) or digest(p))
    cache_dir = tmp_path / "cache"
    train = site.split("train")

    first = site.load("train", PREPROCESS, InputCache(PREPROCESS, cache_dir), workers=1)
    assert len(hashed) == len(train)
    hashed.clear()
    fresh = InputCache(PREPROCESS, cache_dir)  # a new message in a new process
    second = site.load("train", PREPROCESS, fresh, workers=1)
    assert hashed == [] and fresh.decoded == 0, hashed
    for a, b in zip(first.data.images, second.data.images, strict=True):
        np.testing.assert_array_equal(a.numpy(), b.numpy())

    study = train[0].path
    key = InputCache(PREPROCESS, cache_dir).key(study)
    victim = _dicom_files(study)[0]
    data = bytearray(victim.read_bytes())
    data[-1] ^= 0x01
    st = victim.stat()
    victim.write_bytes(bytes(data))
    os.utime(victim, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    changed = InputCache(PREPROCESS, cache_dir)
    site.load("train", PREPROCESS, changed, workers=1)
    assert hashed == [study] and changed.decoded == 1  # only the changed study, and its new key misses
    assert InputCache(PREPROCESS, cache_dir).key(study) != key

    hashed.clear()
    check_site(site, InputCache(PREPROCESS, cache_dir), workers=1)
    assert sorted(hashed) == sorted(s.path for s in site.studies)  # site check trusts no index
    hashed.clear()
    site.load("train", PREPROCESS, InputCache(PREPROCESS, cache_dir), workers=1)
    assert hashed == []


def test_index_writers_sharing_a_cache_merge_and_never_tear(tmp_path):
    a, b = ContentIndex(tmp_path / "index.json"), ContentIndex(tmp_path / "index.json")
    assert a.get(Path("/x"), "fp") is None and b.get(Path("/y"), "fp") is None  # both read an empty index
    a.put(Path("/x"), "fp-x", "dx")
    b.put(Path("/y"), "fp-y", "dy")
    a.save()
    b.save()
    merged = ContentIndex(tmp_path / "index.json")
    assert merged.get(Path("/x"), "fp-x") == "dx" and merged.get(Path("/y"), "fp-y") == "dy"
    assert merged.get(Path("/x"), "other") is None
    assert [p.name for p in tmp_path.iterdir()] == ["index.json"]  # no temporary file left behind
    (tmp_path / "index.json").write_text("{torn")
    assert ContentIndex(tmp_path / "index.json").get(Path("/x"), "fp-x") is None
