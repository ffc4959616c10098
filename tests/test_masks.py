"""The generator's aorta labels (SITE/masks/<id>.nii.gz, manifest column ``mask``) and how a Site reads them."""

from __future__ import annotations

import csv
import hashlib
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest

from fedaaa.common.io import read_study
from fedaaa.common.site import Site
from fedaaa.simulations.synth import MANIFEST_COLUMNS, ScannerProfile, SiteSpec, write_site

# The DICOM pixel data of these sites, digested when the labels were added: writing the labels must not change one
# pixel nor one random draw. Digests of GENERATOR_VERSION 8, whose images changed on purpose (older patients'
# vertebral bodies: a thinner cortical shell, 70-280 HU trabecular bone); version 7's were 58115a0f... and 140c3ade...
# (sacs beside the vertebra, intervertebral discs; their draws shift the noise); version 6's were eab136c7... and 62beb8cd... (a
# quarter of each hospital's studies in its other contrast protocol; larger aneurysms); version 5's were 664f20fd... and c4248d9b...
# (diaphragmatic crura around the upper aorta; their draws shift the noise); version 4's were 9a7282db... and 0b77748e... (unlabelled
# pelvis, bladder, liver, spleen and lung bases); version 3's were 84c35639... and
# 95c4362a... (randomised tissue HU, thrombus and calcification, IVC, renal vein, scan range), version 2's
# 86cc90f5... and fbd68417...
PINNED = {
    "hospital-d": (
        SiteSpec("hospital-d", 4, 0.5, ScannerProfile(name="d", matrix=48, slice_thickness_mm=10.0, noise_hu=10.0), 7),
        "8c53c9a4b539a058d28f923d3a6c328aaf96ef79ba439213540ea09b65c266fd",
    ),
    "hospital-e": (
        SiteSpec(
            "hospital-e",
            3,
            0.5,
            ScannerProfile(
                name="e",
                matrix=40,
                slice_thickness_mm=10.0,
                noise_hu=8.0,
                tortuosity=0.5,
                orientation="flip_both",
                feet_first=True,
                signed=True,
                extras=("thick",),
            ),
            8,
        ),
        "7b31135cb518e89af4505de0beb9bcc2052aafb6f69cfa351e5eb8615d541616",
    ),
}
# straight aorta, 2.25 mm pixels: fine enough to measure the label's diameter
FINE = SiteSpec(
    "hospital-f", 4, 0.5, ScannerProfile(name="f", matrix=160, fov_mm=360.0, slice_thickness_mm=5.0, noise_hu=10.0), 21
)


def _pixel_digest(site: Path) -> str:
    h = hashlib.sha256()
    for f in sorted(p for p in (site / "studies").rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(f)
        except Exception:
            continue
        if "PixelData" in ds:
            h.update(f.relative_to(site).as_posix().encode())
            h.update(ds.PixelData)
    return h.hexdigest()


def _rows(site: Path, name: str) -> list[dict]:
    with open(site / name, newline="") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def fine_site(tmp_path_factory) -> Path:
    return write_site(tmp_path_factory.mktemp("masks"), FINE)


@pytest.mark.parametrize("name", sorted(PINNED))
def test_dicom_pixels_unchanged_and_masks_on_the_grid(tmp_path, name):
    spec, digest = PINNED[name]
    site = write_site(tmp_path, spec)
    assert _pixel_digest(site) == digest
    for row in _rows(site, "manifest.csv"):
        assert row["mask"] == f"masks/{row['study_id']}.nii.gz"
        label, volume = nib.load(site / row["mask"]), read_study(site / row["path"])
        assert label.shape == volume.hu.shape and label.get_data_dtype() == np.uint8
        np.testing.assert_allclose(label.affine, volume.affine, atol=1e-3)
        data = np.asarray(label.dataobj)
        assert set(np.unique(data)) == {0, 1}
        assert (volume.hu[data == 1] > -500).all()  # inside the body: no air


def test_label_measures_the_outer_diameter(fine_site):
    truth = {r["study_id"]: r for r in _rows(fine_site, "truth.csv")}
    for row in _rows(fine_site, "manifest.csv"):
        label, volume = nib.load(fine_site / row["mask"]), read_study(fine_site / row["path"])
        np.testing.assert_allclose(label.affine, volume.affine, atol=1e-3)
        data, affine = np.asarray(label.dataobj), label.affine
        ps = float(affine[0, 0])
        z = affine[2, 3] + affine[2, 2] * np.arange(data.shape[2])
        k = int(np.argmin(np.abs(z - float(truth[row["study_id"]]["max_z_mm"]))))
        assert abs(z[k] - float(truth[row["study_id"]]["max_z_mm"])) < 0.01
        i, j = np.nonzero(data[:, :, k])
        d = float(truth[row["study_id"]]["max_diameter_mm"])
        for extent in ((i.max() - i.min() + 1) * ps, (j.max() - j.min() + 1) * ps):
            assert abs(extent - d) <= ps + 0.05, (row["study_id"], extent, d)
        assert (volume.hu[data == 1] > -500).all()
        body = volume.hu > -500
        assert not (data.astype(bool) & ~body).any()


def test_site_parses_the_mask_column(fine_site):
    rows = _rows(fine_site, "manifest.csv")
    assert list(rows[0]) == list(MANIFEST_COLUMNS) and "mask" in MANIFEST_COLUMNS
    site = Site(fine_site)
    assert [s.mask for s in site.studies] == [site.root / r["mask"] for r in rows]
    assert site.masked() == site.studies and not any(s.problem for s in site.studies)


def test_mask_path_problems_stay_with_their_row(fine_site, tmp_path, caplog):
    site_dir = tmp_path / "site"
    shutil.copytree(fine_site, site_dir)
    (tmp_path / "outside.nii.gz").write_bytes(b"x")
    (site_dir / "masks" / "link.nii.gz").symlink_to(tmp_path / "outside.nii.gz")
    rows = _rows(site_dir, "manifest.csv")
    ids = [r["study_id"] for r in rows]
    bad_masks = {
        ids[0]: "../outside.nii.gz",  # escapes the site by its text: that row is refused
        ids[1]: "masks/a\x1b[2J.nii.gz",  # control characters: that row is refused
        ids[2]: "masks/link.nii.gz",  # escapes by a symlink: the mask is ignored, the study kept
        ids[3]: "",  # no mask
    }
    extra = dict(rows[3], study_id="extra", mask="masks/missing.nii.gz")  # missing file: mask ignored
    with open(site_dir / "manifest.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows([dict(r, mask=bad_masks[r["study_id"]]) for r in rows] + [extra])
    site = Site(site_dir)
    by_id = {s.study_id: s for s in site.studies}
    for sid in ids[:2]:
        assert by_id[sid].problem.startswith("unsafe path: the mask path") and by_id[sid].mask is None
        assert "\x1b" not in by_id[sid].problem
    assert not by_id[ids[2]].problem and not by_id[ids[3]].problem and not by_id["extra"].problem
    assert by_id[ids[3]].mask is None
    assert site.mask_problem(by_id[ids[2]]) == "unsafe path: the mask path leads outside the site folder"
    assert site.mask_problem(by_id["extra"]) == "mask path does not exist"
    with caplog.at_level(logging.WARNING, logger="fedaaa.site"):
        assert site.masked() == []
    assert "extra" in caplog.text and ids[2] in caplog.text
    assert "missing.nii.gz" not in caplog.text  # warnings name the study, not the path
