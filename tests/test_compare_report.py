"""The comparison report of `fedaaa simulate --compare`: table, relative-to-pooled lines, ROC helper, figures."""

from __future__ import annotations

import csv
import math
from itertools import product
from pathlib import Path

import numpy as np
import pytest

from fedaaa.simulations.compare_report import (
    CSV_COLUMNS,
    ArmResult,
    plot_metric_vs_epsilon,
    relative_to_pooled,
    roc_curve,
    write_report,
    write_table,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
SITES = ("hospital-a", "hospital-b", "hospital-c")
NAN = math.nan


def _metrics(auroc: float, mae: float, **extra) -> dict:
    m = {
        "auroc": auroc,
        "sensitivity": 0.8,
        "specificity": 0.9,
        "diameter_mae_mm": mae,
        "diameter_bias_mm": 0.5,
        "dice": 0.85,
        "loa_low_mm": -3.0,
        "loa_high_mm": 4.0,
        "ece": 0.05,
        "n": 60,
        "unmeasured": 2,
    }
    return m | extra


def make_arm(
    name: str,
    kind: str,
    *,
    auroc: float,
    mae: float,
    noise: float,
    seed: int,
    epsilon: float | None = None,
    spent: dict[str, float] | None = None,
    curve: bool = True,
    **extra,
) -> ArmResult:
    """An arm whose per-study arrays are a noisy measurement of the same 60 reference diameters."""
    rng = np.random.default_rng(seed)
    site = np.repeat(np.array(SITES), 20)
    aaa = np.tile(np.r_[np.ones(8, int), np.zeros(12, int)], 3)
    truth = np.where(aaa == 1, rng.uniform(31, 65, 60), rng.uniform(14, 28, 60))
    measured = truth + rng.normal(0.5, noise, 60)
    measured[[3, 40]] = NAN  # two unmeasurable studies
    prob = np.where(np.isfinite(measured), 1 / (1 + np.exp(-(np.nan_to_num(measured) - 30) / 3)), 0.0)
    per_site = {s: _metrics(auroc - 0.02 * i, mae + 0.3 * i) for i, s in enumerate(SITES)}
    rounds = [
        {"round": r, "val_auroc": min(1.0, 0.5 + 0.05 * r * auroc), "val_diameter_mae_mm": mae + 8 / r, "val_dice": 0.1}
        for r in range(1, 9)
    ]
    if curve:
        rounds[2]["val_auroc"] = None  # a missing value in the middle of a curve
        rounds[4]["val_diameter_mae_mm"] = NAN
    return ArmResult(
        name=name,
        kind=kind,
        epsilon=epsilon,
        metrics=_metrics(auroc, mae, **extra),
        per_site=per_site,
        arrays={"measured": measured, "truth": truth, "aaa": aaa, "prob": prob, "site": site},
        curve=rounds if curve else [],
        elapsed_s=600.0 + seed,
        spent_epsilon=spent,
    )


@pytest.fixture
def arms() -> list[ArmResult]:
    a = [
        make_arm("FedAvg", "fedavg", auroc=0.81, mae=2.0, noise=2.0, seed=1),
        make_arm("FedProx mu=0.01", "fedprox", auroc=0.72, mae=4.5, noise=5.0, seed=2, dice=NAN, ece=NAN),
        make_arm("pooled", "pooled", auroc=0.90, mae=3.0, noise=1.5, seed=3),
        make_arm("local-only hospital-a", "local", auroc=NAN, mae=6.0, noise=6.0, seed=4, curve=False, loa_low_mm=NAN),
    ]
    for eps, seed in ((1.0, 5), (3.0, 6), (8.0, 7)):
        spent = {"hospital-a": eps * 0.97, "hospital-b": eps * 0.99, "hospital-c": eps * 0.95}
        a.append(
            make_arm(
                f"FedAvg + DP eps={eps:g}",
                "dp",
                auroc=0.6 + 0.02 * eps,
                mae=9.0 - eps / 2,
                noise=9.0 - eps,
                seed=seed,
                epsilon=eps,
                spent=spent,
            )
        )
    return a


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        assert tuple(reader.fieldnames or ()) == CSV_COLUMNS
        return list(reader)


# --- table -----------------------------------------------------------------------------------------------------


def test_csv_one_row_per_arm_with_raw_numbers(arms, tmp_path):
    write_table(arms, tmp_path / "t.md", tmp_path / "t.csv")
    rows = read_csv(tmp_path / "t.csv")
    assert [r["name"] for r in rows] == [a.name for a in arms]
    assert [r["kind"] for r in rows] == [a.kind for a in arms]
    by = {r["name"]: r for r in rows}
    fedavg = by["FedAvg"]
    assert float(fedavg["auroc"]) == pytest.approx(0.81)
    assert float(fedavg["diameter_mae_mm"]) == pytest.approx(2.0)
    assert float(fedavg["loa_low_mm"]) == -3.0 and float(fedavg["loa_high_mm"]) == 4.0
    assert fedavg["n"] == "60" and fedavg["unmeasured"] == "2"
    assert float(fedavg["minutes"]) == pytest.approx(601.0 / 60)
    assert fedavg["epsilon"] == "" and fedavg["max_spent_epsilon"] == ""  # None -> empty
    # NaN metrics -> empty cells
    assert by["FedProx mu=0.01"]["dice"] == "" and by["FedProx mu=0.01"]["ece"] == ""
    assert by["local-only hospital-a"]["auroc"] == "" and by["local-only hospital-a"]["loa_low_mm"] == ""
    # DP arms: target epsilon and the largest epsilon any hospital spent
    dp3 = by["FedAvg + DP eps=3"]
    assert float(dp3["epsilon"]) == 3.0
    assert float(dp3["max_spent_epsilon"]) == pytest.approx(3 * 0.99)
    assert "nan" not in (tmp_path / "t.csv").read_text().lower()


def _md_rows(md: str) -> dict[str, list[str]]:
    rows = [line for line in md.splitlines() if line.startswith("| ") and not line.startswith("| arm ")]
    return {cells[0]: cells for cells in ([c.strip() for c in line.strip("|").split("|")] for line in rows)}


def test_markdown_formats_numbers_and_shows_nan_as_dash(arms, tmp_path):
    write_table(arms, tmp_path / "t.md", tmp_path / "t.csv")
    md = (tmp_path / "t.md").read_text(encoding="utf-8")
    rows = _md_rows(md)
    assert len(rows) == len(arms)
    head = [
        c.strip() for c in next(line for line in md.splitlines() if line.startswith("| arm ")).strip("|").split("|")
    ]
    col = {h: i for i, h in enumerate(head)}
    fedavg = rows["FedAvg"]
    assert fedavg[col["AUROC"]] == "0.810"
    assert fedavg[col["MAE mm"]] == "2.00"
    assert fedavg[col["95% LoA mm"]] == "-3.00 to +4.00"
    assert fedavg[col["ε target"]] == "-" and fedavg[col["ε spent (max)"]] == "-"
    assert fedavg[col["min"]] == "10.0"
    assert rows["FedProx mu=0.01"][col["Dice"]] == "-" and rows["FedProx mu=0.01"][col["ECE"]] == "-"
    assert rows["local-only hospital-a"][col["AUROC"]] == "-"
    assert rows["local-only hospital-a"][col["95% LoA mm"]] == "- to +4.00"
    assert rows["FedAvg + DP eps=8"][col["ε target"]] == "8"
    assert rows["FedAvg + DP eps=8"][col["ε spent (max)"]] == "7.92"
    assert "nan" not in md.lower()


def test_relative_to_pooled(arms, tmp_path):
    write_table(arms, tmp_path / "t.md", tmp_path / "t.csv")
    md = (tmp_path / "t.md").read_text(encoding="utf-8")
    assert "## Relative to pooled" in md
    lines = relative_to_pooled(arms)
    assert len(lines) == len(arms) - 1  # every arm but pooled
    fedavg = next(line for line in lines if line.startswith("- FedAvg:"))
    assert "AUROC 0.810 = 90.0% of pooled" in fedavg  # 0.81 / 0.90
    assert "MAE 2.00 mm = 0.67× pooled" in fedavg  # 2.0 / 3.0
    fedprox = next(line for line in lines if line.startswith("- FedProx"))
    assert "80.0% of pooled" in fedprox and "1.50× pooled" in fedprox
    local = next(line for line in lines if line.startswith("- local-only"))
    assert "AUROC" not in local and "2.00× pooled" in local  # the arm's own AUROC is NaN: that part is left out
    for line in lines:
        assert line in md


def test_relative_to_pooled_skipped_without_usable_pooled(arms, tmp_path):
    no_pooled = [a for a in arms if a.kind != "pooled"]
    assert relative_to_pooled(no_pooled) == []
    write_table(no_pooled, tmp_path / "t.md", tmp_path / "t.csv")
    assert "Relative to pooled" not in (tmp_path / "t.md").read_text(encoding="utf-8")
    pooled = next(a for a in arms if a.kind == "pooled")
    pooled.metrics["auroc"], pooled.metrics["diameter_mae_mm"] = NAN, 0.0
    assert relative_to_pooled(arms) == []


# --- ROC -------------------------------------------------------------------------------------------------------


def test_roc_perfect_and_reversed():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.1, 0.2, 0.3, 0.7, 0.8, 0.9])
    fpr, tpr, auc = roc_curve(p, y)
    assert auc == 1.0
    assert fpr[0] == 0 and tpr[0] == 0 and fpr[-1] == 1 and tpr[-1] == 1
    assert np.all(np.diff(fpr) >= 0) and np.all(np.diff(tpr) >= 0)
    assert roc_curve(1 - p, y)[2] == 0.0


def _mann_whitney(p: np.ndarray, y: np.ndarray) -> float:
    pos, neg = p[y == 1], p[y == 0]
    return sum((a > b) + 0.5 * (a == b) for a, b in product(pos, neg)) / (len(pos) * len(neg))


def test_roc_ties_count_half():
    y = np.array([1, 0, 1, 0])
    assert roc_curve(np.full(4, 0.5), y)[2] == 0.5  # all tied: the diagonal, not a staircase
    fpr, tpr, _ = roc_curve(np.full(4, 0.5), y)
    assert list(fpr) == [0, 1] and list(tpr) == [0, 1]
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 40)
        p = rng.integers(0, 5, 40) / 4.0  # many ties
        y[:2] = [0, 1]
        assert roc_curve(p, y)[2] == pytest.approx(_mann_whitney(p, y))


def test_roc_one_class_and_nan_prob():
    fpr, tpr, auc = roc_curve(np.array([0.2, 0.9]), np.array([1, 1]))
    assert math.isnan(auc) and len(fpr) == 0 and len(tpr) == 0
    # a NaN probability counts as 0 (the pipeline's value for an unmeasurable study)
    p, y = np.array([0.9, NAN, 0.1, 0.8]), np.array([1, 1, 0, 0])
    assert roc_curve(p, y)[2] == pytest.approx(roc_curve(np.nan_to_num(p), y)[2])


# --- figures ---------------------------------------------------------------------------------------------------

FIGURES = ("metric_vs_epsilon.png", "per_hospital.png", "roc.png", "bland_altman.png", "learning_curves.png")


def assert_png(path: Path, min_bytes: int = 15_000) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC, path
    assert len(data) > min_bytes, (path, len(data))


def test_write_report_writes_everything(arms, tmp_path):
    out = tmp_path / "report"
    paths = write_report(arms, out)
    assert set(paths) == {"comparison.md", "comparison.csv", *FIGURES}
    for name, path in paths.items():
        assert path == out / name and path.is_file()
    for name in FIGURES:
        assert_png(paths[name])
    assert len(read_csv(paths["comparison.csv"])) == len(arms)


def test_no_dp_arms_still_writes_metric_vs_epsilon(arms, tmp_path):
    no_dp = [a for a in arms if a.kind != "dp"]
    path = plot_metric_vs_epsilon(no_dp, tmp_path / "eps.png")
    assert path == tmp_path / "eps.png"
    assert_png(path, 10_000)
    paths = write_report(no_dp, tmp_path / "r")
    assert_png(paths["metric_vs_epsilon.png"], 10_000)


def test_degenerate_inputs_do_not_crash(tmp_path):
    nan_arm = ArmResult(
        name="all NaN",
        kind="dp",
        epsilon=2.0,
        metrics={"auroc": NAN, "diameter_mae_mm": NAN},
        per_site={"hospital-a": {}},
        arrays={
            "measured": np.full(5, NAN),
            "truth": np.full(5, 30.0),
            "aaa": np.zeros(5, int),
            "prob": np.zeros(5),
            "site": np.array(["hospital-a"] * 5),
        },
        curve=[{"round": 1, "val_auroc": None}],
        elapsed_s=NAN,
        spent_epsilon={"hospital-a": NAN},
    )
    empty_arrays = ArmResult("empty", "pooled", None, {}, {}, {}, [], 0.0)
    for arm_list, sub in (([nan_arm, empty_arrays], "a"), ([], "b")):
        paths = write_report(arm_list, tmp_path / sub)
        for name in FIGURES:
            assert_png(paths[name], 5_000)
        assert len(read_csv(paths["comparison.csv"])) == len(arm_list)


def test_roc_rejects_mismatched_lengths():
    with pytest.raises(ValueError, match="3 probabilities but 2 labels"):
        roc_curve(np.array([0.1, 0.2, 0.3]), np.array([0, 1]))
