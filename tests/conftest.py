"""Shared fixtures: small but real synthetic hospitals written as DICOM, made once per test session."""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest

os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
os.environ.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
warnings.filterwarnings("ignore", category=FutureWarning, module="monai")

from fedaaa.simulations.synth import ScannerProfile, SiteSpec, write_site  # noqa: E402

SMALL = ScannerProfile(name="small", matrix=96, fov_mm=380.0, slice_thickness_mm=5.0, noise_hu=10.0)


def small_site(name: str, n: int, seed: int, **profile) -> SiteSpec:
    p = ScannerProfile(**{**SMALL.__dict__, "name": name, **profile})
    return SiteSpec(name=name, n_studies=n, aaa_prevalence=0.5, profile=p, seed=seed)


@pytest.fixture(scope="session")
def tiny_federation(tmp_path_factory) -> list[Path]:
    """Two hospitals of 10 studies each, with different scanners."""
    root = tmp_path_factory.mktemp("federation")
    return [
        write_site(root, small_site("hospital-a", 10, seed=11)),
        write_site(root, small_site("hospital-b", 10, seed=12, contrast=False, signed=True, slice_thickness_mm=3.0)),
    ]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("cache")
