"""`fedaaa simulate --compare`: the comparison table and plots of several training arms tested on the same studies.

Each arm (FedAvg, FedProx, pooled, local-only per hospital, FedAvg under differential privacy) arrives as an
:class:`ArmResult`; :func:`write_report` writes ``comparison.md``, ``comparison.csv`` and five PNG figures.
Missing metrics are NaN (shown as "-" in the markdown table and left empty in the CSV); every figure copes with
NaN values and with arms that have no curve, no measurable study or a single class.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

KINDS = ("pretrained", "fedavg", "fedprox", "pooled", "local", "dp")

#: The columns of comparison.csv, in order (the markdown table shows the same values, LoA merged into one).
CSV_COLUMNS = (
    "name",
    "kind",
    "epsilon",
    "auroc",
    "sensitivity",
    "specificity",
    "dice",
    "diameter_mae_mm",
    "diameter_bias_mm",
    "loa_low_mm",
    "loa_high_mm",
    "ece",
    "unmeasured",
    "n",
    "minutes",
    "max_spent_epsilon",
)


@dataclass
class ArmResult:
    """One training arm's final model, tested on the held-out test studies of every hospital."""

    name: str  # e.g. "FedAvg", "FedProx mu=0.01", "pooled", "local-only hospital-a", "FedAvg + DP eps=8"
    kind: str  # one of KINDS
    epsilon: float | None  # the target epsilon for kind "dp", else None
    metrics: dict  # all test studies pooled: auroc, sensitivity, specificity, diameter_mae_mm, ... (NaN possible)
    per_site: dict[str, dict]  # hospital -> the same keys on that hospital's test split only
    arrays: dict[str, np.ndarray]  # per test study: measured, truth, aaa, prob, site
    curve: list[dict]  # one dict per round (or epoch block): round, val_auroc, val_diameter_mae_mm, ...
    elapsed_s: float
    spent_epsilon: dict[str, float] | None = None  # DP arms: site -> cumulative epsilon actually spent


# ---------------------------------------------------------------------------------------------------------------
# numbers


def _num(v: Any) -> float:
    """A float from a metric value; NaN for None, missing, or anything that is not a number."""
    if v is None or isinstance(v, bool | str):
        return math.nan
    try:
        return float(v)
    except (TypeError, ValueError):
        return math.nan


def _metric(m: dict | None, key: str) -> float:
    return _num((m or {}).get(key))


def max_spent_epsilon(arm: ArmResult) -> float:
    """The largest cumulative epsilon any hospital spent (NaN when the arm reports none)."""
    vals = [_num(v) for v in (arm.spent_epsilon or {}).values()]
    vals = [v for v in vals if not math.isnan(v)]
    return max(vals) if vals else math.nan


def _row(arm: ArmResult) -> dict[str, Any]:
    m = arm.metrics or {}
    row: dict[str, Any] = {"name": arm.name, "kind": arm.kind, "epsilon": _num(arm.epsilon)}
    for key in CSV_COLUMNS[3:12]:
        row[key] = _metric(m, key)
    for key in ("unmeasured", "n"):
        v = _metric(m, key)
        row[key] = int(v) if math.isfinite(v) else math.nan
    row["minutes"] = _num(arm.elapsed_s) / 60.0
    row["max_spent_epsilon"] = max_spent_epsilon(arm)
    return row


def _fmt(v: Any, spec: str) -> str:
    x = _num(v)
    return "-" if math.isnan(x) else format(x, spec)


def _csv_cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, str):
        return v
    if isinstance(v, float) and math.isnan(v):
        return ""
    return str(v)


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def roc_curve(prob: np.ndarray, aaa: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
    """ROC points (false-positive rate, true-positive rate) and the area under them.

    Studies with the same probability form one step (a diagonal segment), so ties count one half, as in the
    Mann-Whitney statistic. A non-finite probability counts as 0 (the pipeline gives unmeasurable studies
    probability 0); studies whose label is not 0/1 are left out. With one class only, the curve is empty and
    the area NaN. Raises ValueError when the two arrays differ in length."""
    p = np.nan_to_num(np.asarray(prob, dtype=float).ravel(), nan=0.0, posinf=1.0, neginf=0.0)
    y = np.asarray(aaa, dtype=float).ravel()
    if len(p) != len(y):
        raise ValueError(f"roc_curve: {len(p)} probabilities but {len(y)} labels")
    keep = (y == 0) | (y == 1)
    p, y = p[keep], y[keep].astype(bool)
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0:
        return np.empty(0), np.empty(0), math.nan
    order = np.argsort(-p, kind="mergesort")
    p, y = p[order], y[order]
    last_of_tie = np.r_[np.flatnonzero(np.diff(p) != 0), len(p) - 1]  # one point per distinct threshold
    tp = np.cumsum(y)[last_of_tie]
    fp = (last_of_tie + 1) - tp
    tpr = np.r_[0.0, tp / n_pos]
    fpr = np.r_[0.0, fp / n_neg]
    auc = float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2.0))
    return fpr, tpr, auc


# ---------------------------------------------------------------------------------------------------------------
# table


def relative_to_pooled(arms: Sequence[ArmResult]) -> list[str]:
    """One markdown bullet per non-pooled arm: AUROC as a % of pooled AUROC, MAE as a multiple of pooled MAE.

    Empty when there is no pooled arm or neither pooled value is usable (NaN or 0); a part is left out when
    the pooled value or the arm's own value for it is not usable."""
    pooled = next((a for a in arms if a.kind == "pooled"), None)
    if pooled is None:
        return []
    p_auc, p_mae = _metric(pooled.metrics, "auroc"), _metric(pooled.metrics, "diameter_mae_mm")
    auc_ok = math.isfinite(p_auc) and p_auc != 0
    mae_ok = math.isfinite(p_mae) and p_mae != 0
    if not (auc_ok or mae_ok):
        return []
    lines = []
    for arm in arms:
        if arm is pooled or arm.kind == "pooled":
            continue
        parts = []
        auc, mae = _metric(arm.metrics, "auroc"), _metric(arm.metrics, "diameter_mae_mm")
        if auc_ok and math.isfinite(auc):
            parts.append(f"AUROC {auc:.3f} = {100.0 * auc / p_auc:.1f}% of pooled")
        if mae_ok and math.isfinite(mae):
            parts.append(f"MAE {mae:.2f} mm = {mae / p_mae:.2f}× pooled")
        lines.append(f"- {_md_escape(arm.name)}: " + ("; ".join(parts) if parts else "-"))
    return lines


def write_table(arms: list[ArmResult], md_path: Path, csv_path: Path) -> None:
    """The comparison table, one row per arm, as markdown (formatted, NaN as "-") and CSV (raw, NaN empty)."""
    rows = [_row(a) for a in arms]
    md_path, csv_path = Path(md_path), Path(csv_path)
    md_path.parent.mkdir(parents=True, exist_ok=True)
    csv_path.parent.mkdir(parents=True, exist_ok=True)

    with csv_path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for r in rows:
            w.writerow([_csv_cell(r[c]) for c in CSV_COLUMNS])

    head = (
        "arm",
        "kind",
        "ε target",
        "AUROC",
        "sens",
        "spec",
        "Dice",
        "MAE mm",
        "bias mm",
        "95% LoA mm",
        "ECE",
        "unmeasured",
        "n",
        "min",
        "ε spent (max)",
    )
    lines = [
        "# Comparison of training arms (held-out test studies of all hospitals)",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|",
    ]
    for r in rows:
        lo, hi = r["loa_low_mm"], r["loa_high_mm"]
        loa = "-" if math.isnan(lo) and math.isnan(hi) else f"{_fmt(lo, '+.2f')} to {_fmt(hi, '+.2f')}"
        cells = (
            _md_escape(r["name"]),
            r["kind"],
            _fmt(r["epsilon"], "g"),
            _fmt(r["auroc"], ".3f"),
            _fmt(r["sensitivity"], ".3f"),
            _fmt(r["specificity"], ".3f"),
            _fmt(r["dice"], ".3f"),
            _fmt(r["diameter_mae_mm"], ".2f"),
            _fmt(r["diameter_bias_mm"], "+.2f"),
            loa,
            _fmt(r["ece"], ".3f"),
            _fmt(r["unmeasured"], ".0f"),
            _fmt(r["n"], ".0f"),
            _fmt(r["minutes"], ".1f"),
            _fmt(r["max_spent_epsilon"], ".2f"),
        )
        lines.append("| " + " | ".join(cells) + " |")
    rel = relative_to_pooled(arms)
    if rel:
        lines += ["", "## Relative to pooled", "", *rel]
    md_path.write_text("\n".join(lines) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------------
# figures


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colors(arms: Sequence[ArmResult]) -> dict[str, Any]:
    """One colour per arm name, the same in every figure."""
    plt = _pyplot()
    names = list(dict.fromkeys(a.name for a in arms))
    cmap = plt.get_cmap("tab10" if len(names) <= 10 else "tab20")
    return {n: cmap(i % cmap.N) for i, n in enumerate(names)}


def _save(fig: Any, path: Path) -> Path:
    plt = _pyplot()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fig.savefig(path, dpi=110, bbox_inches="tight")  # outside legends and labels stay in the picture
    finally:
        plt.close(fig)
    return path


def _legend_below(fig: Any, handles: list, labels: list[str]) -> None:
    if handles:
        fig.legend(handles, labels, loc="outside lower center", ncol=min(4, len(labels)), fontsize=8, frameon=False)


def _array(arm: ArmResult, key: str, dtype: type = float) -> np.ndarray:
    v = (arm.arrays or {}).get(key)
    if v is None:
        return np.empty(0, dtype=dtype)
    return np.asarray(v, dtype=dtype).ravel()


def plot_metric_vs_epsilon(arms: list[ArmResult], path: Path) -> Path:
    """Test AUROC and diameter MAE of the DP arms against their target epsilon (log axis), with the non-private
    FedAvg and pooled arms as horizontal reference lines."""
    plt = _pyplot()
    dp = [a for a in arms if a.kind == "dp" and math.isfinite(_num(a.epsilon)) and _num(a.epsilon) > 0]
    dp.sort(key=lambda a: _num(a.epsilon))
    refs = [a for a in arms if a.kind in ("fedavg", "pooled")]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), layout="constrained")
    panels = (
        ("auroc", "test AUROC", "Detection (AUROC) vs privacy budget"),
        ("diameter_mae_mm", "test diameter MAE (mm)", "Diameter error vs privacy budget"),
    )
    for ax, (key, ylabel, title) in zip(axes, panels):
        if dp:
            eps = np.array([_num(a.epsilon) for a in dp])
            vals = np.array([_metric(a.metrics, key) for a in dp])
            ok = np.isfinite(vals)
            ax.plot(eps[ok], vals[ok], "o-", color="tab:red", label="FedAvg + DP")
            for e, v in zip(eps, vals):
                if math.isnan(v):  # no point to draw: say so at the foot of the axis
                    ax.annotate("n/a", (e, 0.02), xycoords=("data", "axes fraction"), ha="center", fontsize=7)
        else:
            eps = np.array([1.0, 3.0, 8.0])  # the usual budgets, so the empty axis still reads as an epsilon axis
        ax.set_xscale("log")
        ax.set_xticks(eps)
        ax.set_xticklabels([format(e, "g") for e in eps])
        ax.minorticks_off()
        ax.set_xlim(eps.min() / 1.6, eps.max() * 1.6)
        for arm, style in zip(refs, ("--", ":", "-.", (0, (5, 1)), (0, (1, 3)))):
            v = _metric(arm.metrics, key)
            if math.isfinite(v):
                color = "tab:blue" if arm.kind == "fedavg" else "k"
                text = f"{v:.3f}" if key == "auroc" else f"{v:.2f} mm"
                ax.axhline(v, ls=style, color=color, lw=1.2, label=f"{arm.name} (no DP): {text}")
        shown = [v for v in (_metric(a.metrics, key) for a in [*dp, *refs]) if math.isfinite(v)]
        if key == "auroc":
            ax.set_ylim(min([0.45, *(v - 0.05 for v in shown)]), 1.02)
        else:
            ax.set_ylim(0, max([1.0, *shown]) * 1.15)
        ax.set(xlabel="target ε (log scale)", ylabel=ylabel, title=title)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="best")
    if not dp:
        fig.suptitle("No DP arms in this comparison (non-private reference lines only)")
    else:
        fig.suptitle("Differential privacy: test metrics vs target ε")
    return _save(fig, path)


def _sites(arms: Sequence[ArmResult]) -> list[str]:
    return list(dict.fromkeys(s for a in arms for s in (a.per_site or {})))


def plot_per_hospital(arms: list[ArmResult], path: Path) -> Path:
    """Grouped bars: for each hospital, one bar per arm (test AUROC above, diameter MAE below)."""
    plt = _pyplot()
    sites = _sites(arms)
    colors = _colors(arms)
    width_in = max(8.0, 1.0 + 0.22 * max(1, len(arms)) * max(1, len(sites)))
    fig, axes = plt.subplots(2, 1, figsize=(min(width_in, 20.0), 7.5), layout="constrained")
    x = np.arange(len(sites))
    w = 0.8 / max(1, len(arms))
    handles, labels = [], []
    for ax, (key, ylabel, title) in zip(
        axes,
        (
            ("auroc", "test AUROC", "Detection per hospital (test split)"),
            ("diameter_mae_mm", "diameter MAE (mm)", "Diameter error per hospital (test split)"),
        ),
    ):
        for i, arm in enumerate(arms):
            vals = np.array([_metric((arm.per_site or {}).get(s), key) for s in sites])
            pos = x - 0.4 + w * (i + 0.5)
            bars = ax.bar(pos, np.nan_to_num(vals, nan=0.0), w, color=colors[arm.name], label=arm.name)
            for p, v in zip(pos, vals):
                if math.isnan(v):
                    ax.text(
                        p,
                        0.01,
                        "n/a",
                        ha="center",
                        va="bottom",
                        rotation=90,
                        fontsize=7,
                        color="dimgrey",
                        transform=ax.get_xaxis_transform(),
                    )
            if key == "auroc":
                handles.append(bars)
                labels.append(arm.name)
        ax.set_xticks(x)
        ax.set_xticklabels(sites)
        ax.set(xlabel="hospital", ylabel=ylabel, title=title)
        ax.grid(axis="y", alpha=0.3)
        if key == "auroc":
            ax.set_ylim(0, 1.05)
            if sites:
                ax.axhline(0.5, color="grey", lw=0.8, ls=":", label="_chance")
        else:
            ax.set_ylim(0, max(1.0, ax.get_ylim()[1]))
        if not sites:
            ax.text(0.5, 0.5, "no per-hospital results", ha="center", va="center", transform=ax.transAxes)
    fig.suptitle("Per-hospital test metrics (n/a: not available)" if sites else "No per-hospital results", fontsize=11)
    _legend_below(fig, handles, labels)
    return _save(fig, path)


def plot_roc(arms: list[ArmResult], path: Path) -> Path:
    """ROC curve of each arm on all test studies (calibrated P(AAA); unmeasurable studies have P = 0)."""
    plt = _pyplot()
    colors = _colors(arms)
    fig, ax = plt.subplots(figsize=(8.5, 5.6), layout="constrained")
    ax.plot([0, 1], [0, 1], ":", color="grey", lw=1, label="chance")
    for arm in arms:
        prob, aaa = _array(arm, "prob"), _array(arm, "aaa")
        fpr, tpr, auc = roc_curve(prob, aaa)
        if len(fpr):
            ax.plot(fpr, tpr, "-", color=colors[arm.name], lw=1.6, label=f"{arm.name} (AUC {auc:.3f})")
        else:
            ax.plot(
                [],
                [],
                color=colors[arm.name],
                label=f"{arm.name} (AUC n/a: {'one class' if len(aaa) else 'no studies'})",
            )
    ax.set(
        xlabel="1 - specificity (false-positive rate)",
        ylabel="sensitivity (true-positive rate)",
        title="ROC on the held-out test studies (all hospitals)",
        xlim=(-0.01, 1.01),
        ylim=(-0.01, 1.01),
        aspect="equal",
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5), frameon=False)
    return _save(fig, path)


def _bland_altman(arm: ArmResult) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    d, t = _array(arm, "measured"), _array(arm, "truth")
    aaa = _array(arm, "aaa")
    n = min(len(d), len(t))
    d, t = d[:n], t[:n]
    aaa = aaa[:n] if len(aaa) >= n else np.r_[aaa, np.zeros(n - len(aaa))]
    ok = np.isfinite(d) & np.isfinite(t)
    return (d[ok] + t[ok]) / 2.0, d[ok] - t[ok], aaa[ok] == 1


def plot_bland_altman(arms: list[ArmResult], path: Path) -> Path:
    """One Bland-Altman panel per arm (measured - reference vs their mean), shared axes, bias and ±1.96 SD."""
    plt = _pyplot()
    n = max(1, len(arms))
    ncols = min(4, n)
    nrows = math.ceil(n / ncols)
    fig, axes = plt.subplots(
        nrows,
        ncols,
        figsize=(max(7.0, 3.4 * ncols + 0.6), 2.9 * nrows + 1.1),
        sharex=True,
        sharey=True,
        layout="constrained",
        squeeze=False,
    )
    data = [_bland_altman(a) for a in arms]
    all_diff = np.concatenate([d for _, d, _ in data]) if data else np.empty(0)
    all_mean = np.concatenate([m for m, _, _ in data]) if data else np.empty(0)
    for k, ax in enumerate(axes.flat):
        if not arms:
            ax.text(0.5, 0.5, "no arms", ha="center", va="center", transform=ax.transAxes)
            continue
        if k >= len(arms):
            ax.set_visible(False)
            continue
        arm, (mean, diff, is_aaa) = arms[k], data[k]
        ax.axhline(0.0, color="grey", lw=0.6)
        if len(diff):
            ax.scatter(mean[~is_aaa], diff[~is_aaa], s=9, c="tab:blue", label="no AAA")
            ax.scatter(mean[is_aaa], diff[is_aaa], s=9, c="tab:red", label="AAA")
            bias = float(diff.mean())
            ax.axhline(bias, color="k", lw=1)
            if len(diff) > 1:
                sd = float(diff.std(ddof=1))
                for y in (bias - 1.96 * sd, bias + 1.96 * sd):
                    ax.axhline(y, color="k", lw=0.9, ls="--")
                sub = f"bias {bias:+.2f}, LoA ±{1.96 * sd:.2f} mm"
            else:
                sub = f"bias {bias:+.2f} mm"
        else:
            ax.text(0.5, 0.5, "no measurable studies", ha="center", va="center", transform=ax.transAxes, fontsize=8)
            sub = "no pairs"
        ax.set_title(f"{arm.name} (n={len(diff)})\n{sub}", fontsize=8.5)
        ax.grid(alpha=0.25)
        ax.tick_params(labelsize=8, labelbottom=True, labelleft=True)
    if len(all_diff):
        span = max(float(np.abs(all_diff).max()), 1.0) * 1.15
        for ax in axes.flat:
            ax.set_ylim(-span, span)
            lo, hi = float(all_mean.min()), float(all_mean.max())
            pad = max(1.0, 0.05 * (hi - lo))
            ax.set_xlim(lo - pad, hi + pad)
    fig.supxlabel("mean of measured and reference diameter (mm)", fontsize=9)
    fig.supylabel("measured - reference (mm)", fontsize=9)
    fig.suptitle(
        "Bland-Altman per arm, test studies\nred: AAA, blue: no AAA; solid line: bias, dashed: ±1.96 SD", fontsize=10
    )
    return _save(fig, path)


def _curve_series(arm: ArmResult, key: str) -> tuple[np.ndarray, np.ndarray]:
    x = np.array([_num(r.get("round")) for r in arm.curve or []])
    y = np.array([_metric(r, key) for r in arm.curve or []])
    ok = np.isfinite(x) & np.isfinite(y)  # a missing value is skipped: its neighbours are joined
    return x[ok], y[ok]


def plot_learning_curves(arms: list[ArmResult], path: Path) -> Path:
    """Validation Dice, AUROC and diameter MAE per round for every arm that has a learning curve."""
    from matplotlib.ticker import MaxNLocator

    plt = _pyplot()
    colors = _colors(arms)
    with_curve = [a for a in arms if a.curve]
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.8), layout="constrained")
    handles, labels = [], []
    for ax, (key, ylabel, title) in zip(
        axes,
        (
            ("val_dice", "validation Dice", "Validation aorta Dice per round"),
            ("val_auroc", "validation AUROC", "Validation AUROC per round"),
            ("val_diameter_mae_mm", "validation diameter MAE (mm)", "Validation diameter error per round"),
        ),
    ):
        for arm in with_curve:
            x, y = _curve_series(arm, key)
            (line,) = ax.plot(
                x,
                y,
                "s-" if arm.kind in ("pooled", "local") else "o-",
                ms=3.5,
                lw=1.3,
                color=colors[arm.name],
                label=arm.name,
            )
            if key == "val_dice":
                handles.append(line)
                labels.append(arm.name)
        ax.set(xlabel="round (FL) / epoch block (pooled, local)", ylabel=ylabel, title=title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if key in ("val_auroc", "val_dice"):
            ax.set_ylim(0.0, 1.02)
        else:
            ax.set_ylim(bottom=0)
        if not with_curve:
            ax.text(0.5, 0.5, "no learning curves", ha="center", va="center", transform=ax.transAxes)
    if not with_curve:
        fig.suptitle("No arm reported a learning curve")
    _legend_below(fig, handles, labels)
    return _save(fig, path)


def write_report(arms: list[ArmResult], out_dir: Path) -> dict[str, Path]:
    """Write comparison.md, comparison.csv and the five figures into out_dir; their paths by file name."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {"comparison.md": out_dir / "comparison.md", "comparison.csv": out_dir / "comparison.csv"}
    write_table(arms, paths["comparison.md"], paths["comparison.csv"])
    figures: tuple[tuple[str, Callable[[list[ArmResult], Path], Path]], ...] = (
        ("metric_vs_epsilon.png", plot_metric_vs_epsilon),
        ("per_hospital.png", plot_per_hospital),
        ("roc.png", plot_roc),
        ("bland_altman.png", plot_bland_altman),
        ("learning_curves.png", plot_learning_curves),
    )
    for name, plot in figures:
        paths[name] = plot(arms, out_dir / name)
    return paths
