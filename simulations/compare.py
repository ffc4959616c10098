"""`fedaaa simulate --compare`: what federation and privacy cost, on the same synthetic hospitals.

Every arm trains the same network with the same code on the same data and is tested on the same held-out
test studies: FedAvg, FedProx, pooled (all data in one place), local-only (each hospital alone) and FedAvg
with DP-SGD at every hospital for each epsilon asked for.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console

from fedaaa.common.cache import InputCache
from fedaaa.common.config import RunSettings
from fedaaa.common.model import load_model
from fedaaa.server.app import json_safe
from fedaaa.simulations.baselines import train_centralised, val_curve
from fedaaa.simulations.compare_report import ArmResult, write_report
from fedaaa.simulations.simulate import (
    SimulationPlan,
    federate,
    held_out_metrics,
    prepare_federation,
    prepare_inputs,
    round_table,
    test_global_model,
)
from fedaaa.simulations.synth import default_sites, write_federation

DEFAULT_EPSILONS = (1.0, 3.0, 8.0)
DEFAULT_PROXIMAL_MU = 0.01
PUBLIC_SEED_OFFSET = 1000  # the public pre-training set's seed is the run's plus this: other patients
ARMS = ("fedavg", "fedprox", "pooled", "local", "dp")


@dataclass(frozen=True)
class CompareSettings:
    epsilons: tuple[float, ...] = DEFAULT_EPSILONS
    proximal_mu: float = DEFAULT_PROXIMAL_MU
    arms: tuple[str, ...] = ARMS
    # > 0: first pre-train on this many public synthetic studies (another seed, no hospital's data, so no
    # privacy cost), then start every arm from that model (run-config initial-model), and test it alone too
    pretrain_studies: int = 0
    pretrain_rounds: int = 0  # blocks of local epochs it trains (0: as many as each arm's rounds)


def _slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _tested(
    name: str, kind: str, out: Path, sites: list[Path], cache: InputCache, history: dict, t0: float
) -> ArmResult:
    """Test an arm's final model on every hospital's test split, and per hospital."""
    metrics, arrays = test_global_model(out / "global_model.safetensors", sites, cache)
    cut = load_model(out / "global_model.safetensors").calibration.diameter_at(metrics["threshold"])
    per_site = {Path(s).name: held_out_metrics(arrays, cut, arrays["site"] == Path(s).name) for s in sites}
    spent: dict[str, float] = {}
    for entry in history["rounds"]:
        for e in entry.get("sites", []):
            if "dp_epsilon" in e:
                spent[Path(sites[e["site"]]).name if e["site"] < len(sites) else str(e["site"])] = e["dp_epsilon"]
    plots = {k: v for k, v in arrays.items() if k != "dice"}
    arm = ArmResult(
        name=name,
        kind=kind,
        epsilon=None,
        metrics=metrics,
        per_site=per_site,
        arrays=plots,
        curve=val_curve(history),
        elapsed_s=time.time() - t0,
        spent_epsilon=spent or None,
    )
    (out / "test_metrics.json").write_text(json.dumps(json_safe(metrics | {"per_site": per_site}), indent=2))
    return arm


def compare(
    plan: SimulationPlan, settings: RunSettings, options: CompareSettings, console: Console | None = None
) -> list[ArmResult]:
    """Run every arm of ``options`` on the plan's hospitals; write ``OUTPUT/compare/`` (table and plots)."""
    console = console or Console(stderr=True)
    sites, settings, cache = prepare_federation(plan, settings, console)
    root = plan.output_dir / "compare"
    pretrained: list[ArmResult] = []
    if options.pretrain_studies > 0:
        settings, arm = pretrain(plan, settings, options, sites, cache, root, console)
        pretrained.append(arm)
    return run_arms(sites, cache, settings, options, root, console, pretrained)


def pretrain(
    plan: SimulationPlan,
    settings: RunSettings,
    options: CompareSettings,
    sites: list[Path],
    cache: InputCache,
    root: Path,
    console: Console,
) -> tuple[RunSettings, ArmResult]:
    """Train a model on ``options.pretrain_studies`` public synthetic studies (its own seed: none of the
    hospitals' patients; exported in as many scanner styles as the plan has hospitals) for
    ``options.pretrain_rounds`` blocks of local epochs (0: the arms' rounds), and test it on the hospitals'
    test splits. Returns the settings every arm then starts from (``initial-model``) and its result."""
    studies, rounds = options.pretrain_studies, options.pretrain_rounds or settings.num_server_rounds
    per_site = -(-studies // plan.n_sites)  # as many scanner styles as the plan's hospitals, other patients
    public = default_sites(plan.n_sites, per_site, seed=plan.seed + PUBLIC_SEED_OFFSET, matrix=plan.matrix)
    public = [replace(spec, name=f"public-{spec.name}") for spec in public]
    with console.status("Synthesizing the public pre-training set..."):
        public_sites = write_federation(plan.data_dir / "public", public)
    prepare_inputs(public_sites, cache, console)
    name, out, t0 = "pre-trained on public synthetic data only", root / "pretrained", time.time()
    console.rule(name)
    with console.status(f"{name}: training"):
        run = settings.with_overrides(initial_model="", num_server_rounds=rounds)
        history = train_centralised(public_sites, out, run, cache)
    console.print(round_table(history))
    arm = _tested(name, "pretrained", out, sites, cache, history, t0)
    return settings.with_overrides(initial_model=str((out / "global_model.safetensors").resolve())), arm


def run_arms(
    sites: list[Path],
    cache: InputCache,
    settings: RunSettings,
    options: CompareSettings,
    root: Path,
    console: Console | None = None,
    first: list[ArmResult] | None = None,
) -> list[ArmResult]:
    """Train and test every arm of ``options`` on ``sites`` (after the arms ``first``, already trained);
    write the table and plots into ``root``."""
    console = console or Console(stderr=True)
    arms: list[ArmResult] = list(first or [])

    def federated(name: str, kind: str, run: RunSettings, epsilon: float | None = None) -> None:
        out, t0 = root / _slug(name), time.time()
        console.rule(name)
        history = federate(sites, out, run, console, label=f"{name}: ")
        console.print(round_table(history))
        arm = _tested(name, kind, out, sites, cache, history, t0)
        arm.epsilon = epsilon
        arms.append(arm)

    def centralised(name: str, kind: str, subset: list[Path]) -> None:
        out, t0 = root / _slug(name), time.time()
        console.rule(name)
        with console.status(f"{name}: training") as status:
            history = train_centralised(
                subset,
                out,
                settings,
                cache,
                on_block=lambda k, n, e: status.update(
                    f"{name}: block {k}/{n}, val Dice {e.get('val_dice', math.nan):.3f}"
                ),
            )
        console.print(round_table(history))
        arms.append(_tested(name, kind, out, sites, cache, history, t0))

    if "fedavg" in options.arms:
        federated("FedAvg", "fedavg", settings.with_overrides(proximal_mu=0.0, sim_dp_epsilon=""))
    if "fedprox" in options.arms:
        federated(
            f"FedProx mu={options.proximal_mu:g}",
            "fedprox",
            settings.with_overrides(proximal_mu=options.proximal_mu, sim_dp_epsilon=""),
        )
    if "pooled" in options.arms:
        centralised("pooled", "pooled", sites)
    if "local" in options.arms:
        for site in sites:
            centralised(f"local-only {Path(site).name}", "local", [site])
    if "dp" in options.arms:
        for eps in options.epsilons:
            run = settings.with_overrides(proximal_mu=0.0, sim_dp_epsilon=f"{eps:g}")
            federated(f"FedAvg + DP eps={eps:g}", "dp", run, epsilon=eps)
    write_report(arms, root)
    return arms


def sizes(sites: list[Path]) -> dict[str, int]:
    """Training studies per hospital (to name the smallest)."""
    from fedaaa.common.site import Site

    return {Path(s).name: len(Site(s).split("train")) for s in sites}


def headline(arms: list[ArmResult], train_sizes: dict[str, int]) -> list[str]:
    """The issue's questions, answered from the arms: FedAvg against pooled, against the smallest hospital's
    local-only model, and DP at the largest epsilon against FedAvg."""
    by_kind = {a.kind: a for a in arms if a.kind != "local" and a.kind != "dp"}
    lines = []
    fed, pooled = by_kind.get("fedavg"), by_kind.get("pooled")
    if fed and pooled:
        lines.append(
            f"FedAvg reaches {100 * fed.metrics['auroc'] / pooled.metrics['auroc']:.1f}% of pooled AUROC "
            f"({fed.metrics['auroc']:.3f} vs {pooled.metrics['auroc']:.3f}) and "
            f"{fed.metrics['diameter_mae_mm'] / pooled.metrics['diameter_mae_mm']:.2f}x pooled diameter MAE "
            f"({fed.metrics['diameter_mae_mm']:.2f} vs {pooled.metrics['diameter_mae_mm']:.2f} mm)"
        )
    locals_ = {a.name.removeprefix("local-only "): a for a in arms if a.kind == "local"}
    if fed and locals_ and train_sizes:
        smallest = min((s for s in train_sizes if s in locals_), key=train_sizes.get, default=None)
        if smallest:
            loc = locals_[smallest]
            lines.append(
                f"against the smallest hospital alone ({smallest}, {train_sizes[smallest]} training studies): "
                f"AUROC {fed.metrics['auroc']:.3f} vs {loc.metrics['auroc']:.3f}, "
                f"MAE {fed.metrics['diameter_mae_mm']:.2f} vs {loc.metrics['diameter_mae_mm']:.2f} mm"
            )
    pre = next((a for a in arms if a.kind == "pretrained"), None)
    if pre and fed:
        lines.append(
            f"every arm started from a model pre-trained on public synthetic data, which alone reaches AUROC "
            f"{pre.metrics['auroc']:.3f} and MAE {pre.metrics['diameter_mae_mm']:.2f} mm"
        )
    dp = sorted((a for a in arms if a.kind == "dp"), key=lambda a: a.epsilon or 0.0)
    if fed and dp:
        top = dp[-1]
        lines.append(
            f"DP at epsilon {top.epsilon:g}: AUROC {top.metrics['auroc']:.3f} "
            f"({top.metrics['auroc'] - fed.metrics['auroc']:+.3f} vs FedAvg), MAE "
            f"{top.metrics['diameter_mae_mm']:.2f} mm ({top.metrics['diameter_mae_mm'] / fed.metrics['diameter_mae_mm']:.2f}x)"
        )
    return [line for line in lines if "nan" not in line]
