"""One top-level import name: what is installed, what a bare name does, and what `flwr run .` ships."""

from __future__ import annotations

import io
import subprocess
import sys
import zipfile
from importlib.metadata import distribution
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("common", "client", "server", "simulations")


def _python(code: str, cwd: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *flags, "-c", code], capture_output=True, text=True, cwd=cwd, timeout=120)


def test_only_fedaaa_is_installed_at_the_top_level():
    assert distribution("fedaaa").read_text("top_level.txt").split() == ["fedaaa"]


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_bare_names_do_not_import(name, tmp_path):
    elsewhere = _python(f"import {name}", tmp_path)  # a fresh directory: nothing installed under that name
    assert elsewhere.returncode != 0 and "ModuleNotFoundError" in elsewhere.stderr
    # from the repository root the folder is on sys.path, and loading it a second time is refused
    in_tree = _python(f"import {name}", ROOT)
    assert in_tree.returncode != 0
    assert f"import fedaaa.{name} instead of {name}" in in_tree.stderr.strip().splitlines()[-1]


def test_lint_refuses_bare_imports(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("from common.config import RunSettings\nimport server.app\n\nprint(RunSettings, server)\n")
    ruff = Path(sys.executable).parent / "ruff"
    run = subprocess.run(
        [str(ruff), "check", "--config", str(ROOT / "pyproject.toml"), "--select", "TID251", str(probe)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert "`common` is banned" in run.stdout and "`server` is banned" in run.stdout


@pytest.mark.slow
def test_the_app_bundle_of_the_repository_imports_fedaaa_from_itself(tmp_path):
    """`flwr run .` ships a FAB of the repository; a SuperLink/SuperNode imports fedaaa.* from it."""
    from flwr.cli.build import build_fab_from_disk

    fab = zipfile.ZipFile(io.BytesIO(build_fab_from_disk(ROOT)))
    names = fab.namelist()
    assert {n.split("/")[0] for n in names} == {".info", "pyproject.toml", "fedaaa", *SUBPACKAGES}
    assert not [n for n in names if n.startswith(("tests/", "bench/", "data/", "runs/"))]
    fab.extractall(tmp_path / "app")
    # -S: no site-packages, so no editable install to fall back on; only the bundle is on sys.path
    code = (
        "import importlib.util, sys; sys.path.insert(0, '.');"
        "print(*(importlib.util.find_spec(f'fedaaa.{n}.app' if n in ('client', 'server') else f'fedaaa.{n}').origin"
        " for n in ('common', 'client', 'server', 'simulations')), sep='\\n')"
    )
    found = _python(code, tmp_path / "app", "-S")
    assert found.returncode == 0, found.stderr
    origins = [Path(line) for line in found.stdout.split()]
    assert len(origins) == 4 and all(p.resolve().is_relative_to((tmp_path / "app").resolve()) for p in origins)


def test_every_source_package_is_declared():
    """A folder with an ``__init__.py`` that pyproject.toml does not list would be missing from a wheel."""
    import tomllib

    with open(ROOT / "pyproject.toml", "rb") as fh:
        setuptools = tomllib.load(fh)["tool"]["setuptools"]
    declared = set(setuptools["packages"])
    on_disk = {"fedaaa"}
    for package, folder in setuptools["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder).parts
            on_disk.add(".".join((package, *rel)))
    assert declared == on_disk
