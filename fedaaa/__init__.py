"""FedAAA: federated detection and measurement of abdominal aortic aneurysm on CT.

One top-level import name. The design card's folders ``common/``, ``client/``, ``server/`` and
``simulations/`` are the subpackages ``fedaaa.common``, ``fedaaa.client``, ``fedaaa.server`` and
``fedaaa.simulations``: an installed wheel holds them under ``fedaaa/``; an editable install maps them
(setuptools ``package-dir``); in a bare source tree, such as the app bundle that ``flwr run .`` ships
to a SuperLink, the folders beside this one are added to this package's search path below.
"""

from pathlib import Path as _Path

SUBPACKAGES = ("common", "client", "server", "simulations")

_here = _Path(__file__).resolve().parent
_tree = _here.parent
if (
    not (_here / "common").is_dir()
    and (_tree / "pyproject.toml").is_file()
    and all((_tree / name / "__init__.py").is_file() for name in SUBPACKAGES)
):
    __path__.append(str(_tree))  # noqa: F821 - a package's search path


def require_namespace(module_name: str) -> None:
    """Refuse a subpackage imported under a bare name (``import common``), which would load its modules
    a second time, as different objects, beside ``fedaaa.common``."""
    if not module_name.startswith("fedaaa."):
        raise ImportError(f"import fedaaa.{module_name} instead of {module_name}: FedAAA installs one namespace")
