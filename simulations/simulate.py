"""`fedaaa simulate`: synthetic hospitals, a local Flower federation, and a held-out test of the result."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from monai.metrics import compute_roc_auc
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from fedaaa.common.cache import InputCache
from fedaaa.common.calibration import expected_calibration_error, reliability
from fedaaa.common.config import PREPROCESS, RunSettings
from fedaaa.common.errors import ConfigError
from fedaaa.common.metrics import evaluation_stats, summarize
from fedaaa.common.model import load_model
from fedaaa.common.progress import progress_bar
from fedaaa.common.site import Site
from fedaaa.common.training import pick_device, predict_set
from fedaaa.simulations.defaults import DEFAULT_MATRIX, DEFAULT_SEED, DEFAULT_SITES, DEFAULT_STUDIES_PER_SITE
from fedaaa.simulations.federation import run_local_federation
from fedaaa.simulations.synth import default_sites, write_federation


@dataclass(frozen=True)
class SimulationPlan:
    output_dir: Path
    data_dir: Path
    n_sites: int = DEFAULT_SITES
    studies_per_site: int = DEFAULT_STUDIES_PER_SITE
    matrix: int = DEFAULT_MATRIX
    seed: int = DEFAULT_SEED


def _progress(console: Console) -> Progress:
    return progress_bar(console, transient=False)


def prepare_inputs(sites: list[Path], cache: InputCache, console: Console) -> None:
    """Decode and preprocess every study once (in parallel workers), so federation rounds read only the cache."""
    for site_path in sites:
        site = Site(site_path)
        with _progress(console) as progress:
            task = progress.add_task(f"Preparing {site_path.name}", total=len(site.studies))
            prepared = site.prepare(
                site.studies,
                cache,
                workers=None,
                progress=lambda done, total, task=task: progress.update(task, completed=done),
            )
        for study, p in zip(site.studies, prepared):
            if p.error:  # reported again, per study, by the client that skips it
                console.print(f"[yellow]{site_path.name}: skipping {study.study_id}: {p.error}")


def test_global_model(model_path: Path, sites: list[Path], cache: InputCache) -> tuple[dict, dict]:
    """Exact metrics of the final model on the test splits, which no round trained or validated on; and the
    per-study arrays behind them (kept on the researcher's machine, for the plots), with each study's site."""
    mf = load_model(model_path)
    device = pick_device()
    measured, labels, truths, dice, site_names = [], [], [], [], []
    for site in sites:
        split = Site(site).load("test", mf.preprocess, cache)
        if split.data is None:
            continue
        rows = predict_set(mf.model, split.data, device)
        measured += [r["diameter"] for r in rows]
        dice += [(r["inter"], r["pred"], r["true"]) if "inter" in r else None for r in rows]
        labels += split.data.aaa
        truths += split.data.diameters
        site_names += [Path(site).name] * len(rows)
    if not measured:
        raise ConfigError("no usable test studies in any site: nothing to test the global model on")
    d, aaa, dtrue = np.array(measured, dtype=float), np.array(labels, dtype=int), np.array(truths, dtype=float)
    prob = np.where(np.isfinite(d), mf.calibration.probability(np.nan_to_num(d, nan=0.0)), 0.0)
    arrays = {"measured": d, "truth": dtrue, "aaa": aaa, "prob": prob, "site": np.array(site_names), "dice": dice}
    return held_out_metrics(arrays, mf.calibration.diameter_at(mf.threshold)) | {
        "threshold": mf.threshold,
        "calibration": {"slope_per_mm": mf.calibration.slope_per_mm, "center_mm": mf.calibration.center_mm},
    }, arrays


def held_out_metrics(arrays: dict, cut_mm: float, keep: np.ndarray | None = None) -> dict:
    """Test metrics of the studies ``keep`` (all by default) of ``arrays`` (see :func:`test_global_model`)."""
    keep = np.ones(len(arrays["measured"]), dtype=bool) if keep is None else keep
    d, aaa, dtrue, prob = (arrays[k][keep] for k in ("measured", "aaa", "truth", "prob"))
    dice = [c for c, k in zip(arrays["dice"], keep) if k and c is not None]
    metrics: dict = dict(summarize(evaluation_stats(d, aaa, dtrue, dice, cut_mm=cut_mm)))
    both = len(set(aaa.tolist())) == 2
    auroc = compute_roc_auc(torch.from_numpy(prob), torch.from_numpy(aaa.astype(np.int64))) if both else math.nan
    metrics["auroc"] = float(auroc)
    known = np.isfinite(d) & np.isfinite(dtrue)
    err = d[known] - dtrue[known]
    sd = float(err.std(ddof=1)) if len(err) > 1 else math.nan
    return metrics | {
        "n_aaa": int(aaa.sum()),
        "threshold_diameter_mm": round(cut_mm, 2),
        "loa_low_mm": metrics["diameter_bias_mm"] - 1.96 * sd,
        "loa_high_mm": metrics["diameter_bias_mm"] + 1.96 * sd,
        "ece": expected_calibration_error(prob, aaa) if len(aaa) else math.nan,
    }


def plot_learning_curve(history: dict, test: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rounds = [r for r in history["rounds"] if r["round"] > 0]
    x = [r["round"] for r in rounds]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(x, [r.get("train_loss") for r in rounds], "o-", label="train loss (Dice + CE, mean over sites)")
    ax1b = ax1.twinx()
    ax1b.plot(x, [r.get("val_dice") for r in rounds], "^-", color="tab:green", label="validation Dice")
    ax1b.plot(x, [r.get("val_auroc") for r in rounds], "s-", color="tab:purple", label="validation AUROC")
    ax1b.set_ylim(0.0, 1.02)
    ax1.set(xlabel="round", ylabel="loss", title="Segmentation and detection")
    # one legend under the panel: inside it, a corner legend hid the last rounds' points
    handles, labels = (a + b for a, b in zip(ax1.get_legend_handles_labels(), ax1b.get_legend_handles_labels()))
    ax1.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8)
    ax2.plot(x, [r.get("val_diameter_mae_mm") for r in rounds], "o-", label="validation MAE")
    ax2.axhline(test["diameter_mae_mm"], ls=":", color="k", label=f"test MAE {test['diameter_mae_mm']:.2f} mm")
    ax2.set(xlabel="round", ylabel="mm", title="Maximum diameter error")
    ax2.legend(loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=2, fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_test(arrays: dict, test: dict, path: Path) -> Path:
    """Bland-Altman plot of the measured against the reference diameters, and the reliability diagram."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    d, t, aaa, prob = arrays["measured"], arrays["truth"], arrays["aaa"], arrays["prob"]
    ok = np.isfinite(d) & np.isfinite(t)
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    mean, diff = (d[ok] + t[ok]) / 2, d[ok] - t[ok]
    ax1.scatter(mean, diff, c=np.where(aaa[ok] == 1, "tab:red", "tab:blue"), s=18)
    for y, style, name in (
        (test["diameter_bias_mm"], "-", "bias"),
        (test["loa_low_mm"], "--", "95% limits"),
        (test["loa_high_mm"], "--", None),
    ):
        ax1.axhline(y, ls=style, color="k", lw=1, label=name and f"{name} {y:+.2f} mm")
    ax1.set(
        xlabel="mean of measured and reference diameter (mm)",
        ylabel="measured - reference (mm)",
        title=f"Bland-Altman, test (n={int(ok.sum())}; red AAA)",
    )
    ax1.legend(fontsize=8)
    mean_p, frac, counts = reliability(prob, aaa)
    keep = counts > 0
    ax2.plot([0, 1], [0, 1], ":", color="grey", label="perfect calibration")
    ax2.plot(mean_p[keep], frac[keep], "o-", label=f"model (ECE {test['ece']:.3f})")
    for mp, fr, c in zip(mean_p[keep], frac[keep], counts[keep]):
        ax2.annotate(str(int(c)), (mp, fr), textcoords="offset points", xytext=(4, -10), fontsize=7)
    ax2.set(xlabel="predicted AAA probability", ylabel="observed AAA fraction", title="Reliability (test)")
    ax2.set_xlim(0, 1), ax2.set_ylim(-0.02, 1.02)
    ax2.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _dp_cell(entry: dict) -> str:
    """The epsilon each DP site has spent so far, by site index ("-" for a site without DP; "!" marks a
    site that refused the round to stay within its budget)."""
    sites = entry.get("sites", [])
    if not any("dp_epsilon" in e for e in sites):
        return "-"
    return " ".join(
        f"{e['site']}:{e['dp_epsilon']:.2f}{'!' if e.get('dp_refused') else ''}"
        if "dp_epsilon" in e
        else f"{e['site']}:-"
        for e in sites
    )


def round_table(history: dict) -> Table:
    table = Table(title="Federated rounds (validation splits, aggregated across hospitals)")
    with_dp = any("dp_epsilon" in e for r in history["rounds"] for e in r.get("sites", []))
    columns = ["round", "sites", "train loss", "val Dice", "val AUROC", "val sens", "val spec", "val MAE mm"]
    for col in [*columns, *(["DP epsilon spent, per site"] if with_dp else []), "elapsed s"]:
        table.add_column(col, justify="right")

    def fmt(v: float | None, spec: str = ".3f") -> str:
        return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    for r in history["rounds"]:
        if r["round"] == 0:
            continue
        cells = [
            str(r["round"]),
            str(r.get("train_sites", "-")),
            fmt(r.get("train_loss"), ".4f"),
            fmt(r.get("val_dice")),
            fmt(r.get("val_auroc")),
            fmt(r.get("val_sensitivity"), ".2f"),
            fmt(r.get("val_specificity"), ".2f"),
            fmt(r.get("val_diameter_mae_mm"), ".2f"),
        ]
        table.add_row(*cells, *([_dp_cell(r)] if with_dp else []), fmt(r.get("elapsed_s"), ".0f"))
    return table


def prepare_federation(
    plan: SimulationPlan, settings: RunSettings, console: Console
) -> tuple[list[Path], RunSettings, InputCache]:
    """Build (or reuse) the synthetic hospitals and preprocess every study once into the cache."""
    specs = default_sites(plan.n_sites, plan.studies_per_site, seed=plan.seed, matrix=plan.matrix)
    with console.status("Synthesizing hospitals as DICOM...") as status:
        sites = write_federation(plan.data_dir, specs, progress=lambda msg: status.update(f"Synthesizing {msg}"))
    cache_dir = Path(settings.cache_dir) if settings.cache_dir else plan.data_dir / ".cache"
    settings = settings.with_overrides(cache_dir=str(cache_dir.resolve()))
    cache = InputCache(PREPROCESS, cache_dir)
    prepare_inputs(sites, cache, console)
    return sites, settings, cache


def federate(sites: list[Path], output_dir: Path, settings: RunSettings, console: Console, label: str = "") -> dict:
    """One federation with a progress bar; returns its history."""
    with _progress(console) as progress:
        task = progress.add_task(f"{label}Federated rounds", total=settings.num_server_rounds)

        def on_round(k: int, n: int) -> None:
            progress.update(task, completed=k - 1, description=f"{label}Federated round {k}/{n}")

        history = run_local_federation(sites, output_dir, settings, on_round=on_round)
        progress.update(task, completed=settings.num_server_rounds, description=f"{label}Federated rounds")
    return history


def simulate(plan: SimulationPlan, settings: RunSettings, console: Console | None = None) -> dict:
    """Build (or reuse) synthetic hospitals, federate, and test; returns the test metrics."""
    console = console or Console(stderr=True)
    sites, settings, cache = prepare_federation(plan, settings, console)
    history = federate(sites, plan.output_dir, settings, console)
    console.print(round_table(history))

    model_path = plan.output_dir / "global_model.safetensors"
    test, arrays = test_global_model(model_path, sites, cache)
    (plan.output_dir / "test_metrics.json").write_text(json.dumps(test, indent=2))
    plot_learning_curve(history, test, plan.output_dir / "learning_curve.png")
    plot_test(arrays, test, plan.output_dir / "test_agreement.png")
    return test
