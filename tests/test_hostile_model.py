"""Hostile model files: every malformed, absurd or damaged file is refused in one line, nothing is built first.

Each bad file starts from a valid one (``save_model`` of a fresh :class:`AortaNet`) whose metadata or
tensors are rewritten with ``safetensors.torch.save_file``, or whose bytes are damaged. Every case is
refused by :func:`load_model` with a :class:`ConfigError` naming the file once, and by ``fedaaa predict``
with one ``error: <file>: <reason>`` line and exit code 2.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from fedaaa.cli import main
from fedaaa.common.errors import ConfigError
from fedaaa.common.model import AortaNet, ModelFile, load_model, save_model
from fedaaa.common.model_file import read_model_file
from fedaaa.common.settings import ArchSettings, PreprocessSettings

ARCH = json.loads(ArchSettings().to_json())
PRE = json.loads(PreprocessSettings().to_json())


def _arch(**changes) -> str:
    return json.dumps({**ARCH, **changes})


def _pre(**changes) -> str:
    return json.dumps({**PRE, **changes})


def _without(d: dict, key: str) -> str:
    return json.dumps({k: v for k, v in d.items() if k != key})


# Metadata mutations: key -> new value (None deletes the key). Grouped by defect class.
METADATA_CASES = {
    # architecture not an object / not JSON / wrong keys
    "arch-list": {"architecture": "[]"},
    "arch-null": {"architecture": "null"},
    "arch-number": {"architecture": "7"},
    "arch-not-json": {"architecture": "{channels: [8]"},
    "arch-missing-key": {"architecture": _without(ARCH, "patch_size")},
    "arch-unknown-key": {"architecture": _arch(kernel=5)},
    "arch-missing": {"architecture": None},
    "arch-empty-object": {"architecture": "{}"},
    # architecture values: types and ranges
    "res-units-negative": {"architecture": _arch(res_units=-1)},
    "res-units-huge": {"architecture": _arch(res_units=1000)},
    "res-units-string": {"architecture": _arch(res_units="1")},
    "res-units-float": {"architecture": _arch(res_units=1.5)},
    "patch-not-dividing": {"architecture": _arch(patch_size=[81, 80, 32])},
    "patch-two-values": {"architecture": _arch(patch_size=[80, 80])},
    "patch-huge": {"architecture": _arch(patch_size=[4096, 80, 32])},
    "channels-empty": {"architecture": _arch(channels=[])},
    "channels-number": {"architecture": _arch(channels=8)},
    "channels-huge": {"architecture": _arch(channels=[8, 16, 512, 65536])},
    "channels-zero": {"architecture": _arch(channels=[8, 0, 32])},
    "channels-negative": {"architecture": _arch(channels=[8, -16])},
    "channels-float": {"architecture": _arch(channels=[8.0, 16, 32, 64])},
    "channels-bool": {"architecture": _arch(channels=[True, 16])},
    "channels-too-many-stages": {"architecture": _arch(channels=[8] * 40)},
    "too-many-weights": {"architecture": _arch(channels=[512] * 8, patch_size=[128, 128, 128])},
    "patch-null": {"architecture": _arch(patch_size=None)},
    "dropout-one": {"architecture": _arch(dropout=1.0)},
    "dropout-negative": {"architecture": _arch(dropout=-0.5)},
    "dropout-nan": {"architecture": _arch(dropout=math.nan)},
    "slope-inf": {"architecture": _arch(negative_slope=math.inf)},
    "slope-string": {"architecture": _arch(negative_slope="0.1")},
    # preprocess: missing, not an object, spacing
    "preprocess-missing": {"preprocess": None},
    "preprocess-null": {"preprocess": "null"},
    "preprocess-empty-object": {"preprocess": "{}"},
    "preprocess-not-json": {"preprocess": "spacing 2.5"},
    "preprocess-missing-key": {"preprocess": _without(PRE, "hu_window")},
    "spacing-number": {"preprocess": _pre(spacing_mm=2.5)},
    "spacing-zero": {"preprocess": _pre(spacing_mm=[0, 0, 0])},
    "spacing-negative": {"preprocess": _pre(spacing_mm=[-2.5, 2.5, 5.0])},
    "spacing-nan": {"preprocess": _pre(spacing_mm=[math.nan, 2.5, 5.0])},
    "spacing-inf": {"preprocess": _pre(spacing_mm=[2.5, math.inf, 5.0])},
    "spacing-tiny": {"preprocess": _pre(spacing_mm=[1e-6, 2.5, 5.0])},
    "spacing-huge": {"preprocess": _pre(spacing_mm=[2.5, 2.5, 1e9])},
    "spacing-two": {"preprocess": _pre(spacing_mm=[2.5, 2.5])},
    "spacing-strings": {"preprocess": _pre(spacing_mm=["2.5", "2.5", "5"])},
    # preprocess: roi size and HU window
    "roi-huge": {"preprocess": _pre(roi_size=[512, 512, 512])},
    "roi-giant-dim": {"preprocess": _pre(roi_size=[64, 64, 10**9])},
    "roi-zero": {"preprocess": _pre(roi_size=[0, 64, 48])},
    "roi-float": {"preprocess": _pre(roi_size=[64.5, 64, 48])},
    "patch-too-small-for-pooling": {"architecture": _arch(channels=[8] * 6, patch_size=[8, 8, 8])},
    "window-reversed": {"preprocess": _pre(hu_window=[450.0, -150.0])},
    "window-nan": {"preprocess": _pre(hu_window=[math.nan, 450.0])},
    "window-huge": {"preprocess": _pre(hu_window=[-1e30, 450.0])},
    "window-one": {"preprocess": _pre(hu_window=[450.0])},
    # threshold
    "threshold-abc": {"threshold": "abc"},
    "threshold-nan": {"threshold": "nan"},
    "threshold-inf": {"threshold": "inf"},
    "threshold-minus-one": {"threshold": "-1"},
    "threshold-zero": {"threshold": "0"},
    "threshold-one": {"threshold": "1.0"},
    "threshold-empty": {"threshold": ""},
    "threshold-missing": {"threshold": None},
    # round
    "round-negative": {"round": "-1"},
    "round-abc": {"round": "abc"},
    "round-float": {"round": "2.5"},
    "round-huge": {"round": "9" * 5000},
    # summary
    "summary-not-json": {"summary": "{not json"},
    "summary-list": {"summary": "[1, 2]"},
    "summary-null": {"summary": "null"},
    "summary-deep-bomb": {"summary": "[" * 30_000 + "]" * 30_000},  # under the size cap: recursion
    "summary-deep-bomb-big": {"summary": "[" * 500_000 + "]" * 500_000},
    "summary-deep-dict": {"summary": '{"a":' * 500 + "1" + "}" * 500},
    "summary-oversized": {"summary": json.dumps({"note": "x" * 200_000})},
    "metadata-oversized": {"summary": json.dumps({"note": "x" * 2_000_000}), "_expect": "header"},
    "summary-huge-int": {"summary": '{"n": ' + "9" * 10_000 + "}"},
    # format
    "format-missing": {"format": None},
    "format-version-unknown": {"format_version": "99"},
    "format-version-missing": {"format_version": None},
}


@pytest.fixture(scope="module")
def valid(tmp_path_factory) -> tuple[Path, dict[str, torch.Tensor], dict[str, str]]:
    """A valid model file, its state dict and metadata."""
    torch.manual_seed(0)
    path = save_model(
        tmp_path_factory.mktemp("model") / "valid.safetensors",
        ModelFile(AortaNet(), PreprocessSettings(), threshold=0.4, round=3, summary={"val_auroc": math.nan}),
    )
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        meta = dict(f.metadata())
        state = {k: f.get_tensor(k) for k in f.keys()}
    return path, state, meta


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """A tiny NIfTI study (never read when the model is refused first)."""
    hu = np.full((32, 32, 24), -1000.0, dtype=np.float32)
    hu[6:26, 8:24, :] = 40.0
    hu[14:18, 12:16, :] = 300.0
    path = tmp_path_factory.mktemp("study") / "study.nii.gz"
    nib.save(nib.Nifti1Image(hu, np.diag([10.0, 10.0, 10.0, 1.0])), str(path))
    return path


def _write(path: Path, state: dict[str, torch.Tensor], meta: dict[str, str], changes: dict) -> Path:
    meta = dict(meta)
    for k, v in changes.items():
        if v is None:
            meta.pop(k, None)
        else:
            meta[k] = v
    save_file(state, str(path), metadata=meta)
    return path


def _assert_refused(path: Path, study: Path, capsys) -> str:
    """Refused by load_model (ConfigError naming the file once) and by the CLI (one line, exit 2); the reason."""
    with pytest.raises(ConfigError) as info:
        load_model(path)
    message = str(info.value)
    assert message.startswith(f"{path}: ") and message.count(str(path)) == 1
    assert "\n" not in message and len(message) < len(str(path)) + 200
    capsys.readouterr()
    assert main(["predict", str(study), "--model", str(path)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err == f"error: {message}\n"
    assert "Traceback" not in err
    return message[len(f"{path}: ") :]  # the reason


def test_valid_model_loads_and_predicts(valid, study, capsys):
    path, state, _ = valid
    mf = load_model(path)
    assert mf.threshold == 0.4 and mf.round == 3 and math.isnan(mf.summary["val_auroc"])
    for k, v in state.items():
        assert torch.equal(mf.model.state_dict()[k], v)
    assert main(["predict", str(study), "--json", "--model", str(path)]) in (0, 2)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["input"] == str(study)


def test_half_precision_weights_load_as_float32(valid, tmp_path):
    path, state, meta = valid
    half = _write(tmp_path / "half.safetensors", {k: v.half() for k, v in state.items()}, meta, {})
    mf = load_model(half)
    assert all(p.dtype == torch.float32 for p in mf.model.parameters())


@pytest.mark.parametrize("case", sorted(METADATA_CASES))
def test_malformed_metadata_is_refused_in_one_line(case, valid, study, tmp_path, capsys):
    """Refused, and the reason names what is wrong (the key it mutates, e.g. architecture or threshold)."""
    _, state, meta = valid
    changes = dict(METADATA_CASES[case])
    expect = changes.pop("_expect", None) or next(iter(changes)).split("_")[0].replace("round", "round ")
    path = _write(tmp_path / f"{case}.safetensors", state, meta, changes)
    assert expect in _assert_refused(path, study, capsys)


def _state_cases(state: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    first = next(k for k in state if k.endswith("conv.weight"))  # the first convolution: (8, 1, 3, 3, 3)
    last = list(state)[-1]  # the output convolution's bias
    second = [k for k in state if k.endswith("conv.weight")][1]  # (16, 8, 3, 3, 3): transposed is (8, 16, ...)
    nan, inf = dict(state), dict(state)
    nan[first] = state[first].clone()
    nan[first][0, 0, 0, 0, 0] = math.nan
    inf[last] = torch.full_like(state[last], math.inf)
    return {
        "weights-nan": nan,
        "weights-inf": inf,
        "weights-wrong-shape": {**state, first: torch.zeros(8, 1, 5, 5, 5)},
        "weights-transposed": {**state, second: state[second].transpose(0, 1).contiguous()},
        "weights-missing": {k: v for k, v in state.items() if k != last},
        "weights-extra": {**state, "backdoor.weight": torch.zeros(3)},
        "weights-renamed": {k.replace("unet", "layers"): v for k, v in state.items()},
        "weights-int": {**state, first: torch.zeros(8, 1, 3, 3, 3, dtype=torch.int32)},
        "weights-bool": {**state, last: torch.zeros(1, dtype=torch.bool)},
        "weights-none": {},
    }


STATE_CASES = sorted(_state_cases(AortaNet().state_dict()))


@pytest.mark.parametrize("case", STATE_CASES)
def test_weights_that_do_not_fit_or_are_not_finite_are_refused(case, valid, study, tmp_path, capsys):
    _, state, meta = valid
    path = _write(tmp_path / f"{case}.safetensors", _state_cases(state)[case], meta, {})
    message = _assert_refused(path, study, capsys)
    assert "weight" in message
    if case in ("weights-nan", "weights-inf"):
        assert "non-finite" in message


def _damaged(valid_bytes: bytes) -> dict[str, bytes]:
    n = int.from_bytes(valid_bytes[:8], "little")
    return {
        "empty": b"",
        "text": b"not a model at all\n",
        "random": np.random.default_rng(0).bytes(4096),
        "truncated-header": valid_bytes[: 8 + n // 2],
        "truncated-data": valid_bytes[: len(valid_bytes) - 1000],
        "header-length-huge": (2**62).to_bytes(8, "little") + valid_bytes[8:],
        "header-length-past-end": (len(valid_bytes)).to_bytes(8, "little") + valid_bytes[8:],
        "header-garbled": valid_bytes[:8] + b"\xff" * 64 + valid_bytes[72:],
        "gzip": b"\x1f\x8b\x08\x00" + valid_bytes[:200],
        "huge-tensor-declared": _huge_header(),
    }


def _huge_header() -> bytes:
    header = json.dumps(
        {
            "__metadata__": {"format": "fedaaa-model"},
            "w": {"dtype": "F32", "shape": [100_000, 100_000, 100], "data_offsets": [0, 4 * 10**12]},
        }
    ).encode()
    return len(header).to_bytes(8, "little") + header + b"\0" * 64


DAMAGED_CASES = sorted(_damaged(b"\0" * 64))


@pytest.mark.parametrize("case", DAMAGED_CASES)
def test_damaged_files_are_refused(case, valid, study, tmp_path, capsys):
    path = tmp_path / f"{case}.safetensors"
    path.write_bytes(_damaged(valid[0].read_bytes())[case])
    _assert_refused(path, study, capsys)


def test_not_a_file_is_refused(tmp_path, study, capsys):
    folder = tmp_path / "folder.safetensors"
    folder.mkdir()
    _assert_refused(folder, study, capsys)
    _assert_refused(tmp_path / "absent.safetensors", study, capsys)
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo.safetensors"
        os.mkfifo(fifo)
        _assert_refused(fifo, study, capsys)  # never opened: it would block


def test_server_checkpoints_keep_reading_any_state(tmp_path):
    """read_model_file (the coordinator's) validates the metadata but not the tensor names."""
    from fedaaa.common.model_file import ModelMeta, write_model_file

    path = write_model_file(tmp_path / "c.safetensors", {"w": torch.zeros(2, 3)}, ModelMeta(round=1))
    state, meta = read_model_file(path)
    assert meta.round == 1 and set(state) == {"w"}


HUGE_CHANNELS_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys, time
    resource.setrlimit(resource.RLIMIT_AS, (3 << 30, 3 << 30))
    from safetensors.torch import save_file
    from fedaaa.common.errors import ConfigError
    from fedaaa.common.model import AortaNet, load_model
    from fedaaa.common.model_file import FORMAT
    from fedaaa.common.settings import ArchSettings, PreprocessSettings

    path = sys.argv[1]
    meta = {
        "format": FORMAT, "format_version": "1", "preprocess": PreprocessSettings().to_json(),
        "architecture": json.dumps({**json.loads(ArchSettings().to_json()), "channels": json.loads(sys.argv[2])}),
        "threshold": "0.5", "round": "0", "summary": "{}",
    }
    save_file(AortaNet().state_dict(), path, metadata=meta)

    def peak_kb():  # VmHWM: this process image's own peak (ru_maxrss carries the parent's over fork/exec)
        return int(next(line for line in open("/proc/self/status") if line.startswith("VmHWM:")).split()[1])

    before = peak_kb()
    t0 = time.perf_counter()
    try:
        load_model(path)
    except ConfigError as err:
        grown = peak_kb() - before
        print(json.dumps({"error": str(err), "seconds": time.perf_counter() - t0, "grown_kb": grown}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("channels", [[8, 16, 512, 65536], [512, 512, 512, 512, 512, 512, 512, 512], [4096] * 3])
def test_huge_architecture_is_refused_before_allocating(channels, tmp_path):
    """Under a 3 GB address-space limit the file is refused quickly, with no memory allocated for weights."""
    proc = subprocess.run(
        [sys.executable, "-c", HUGE_CHANNELS_SCRIPT, str(tmp_path / "huge.safetensors"), json.dumps(channels)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "huge.safetensors: " in result["error"]
    assert result["seconds"] < 2.0 and result["grown_kb"] < 50_000
