"""The `fedaaa` command: synth, simulate, predict, site check. Errors are one line on stderr and exit code 2."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # the command line imports its heavy parts only in the subcommand that needs them
    from rich.console import Console
    from rich.progress import Progress

    from fedaaa.common.config import RunSettings
    from fedaaa.simulations.simulate import SimulationPlan

EXIT_REFUSED = 2


class CLIError(Exception):
    """A user-facing failure: printed as `error: <message>`."""


def _cmd_synth(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedaaa.simulations.synth import default_sites, write_federation

    specs = default_sites(args.sites, args.studies_per_site, seed=args.seed, matrix=args.matrix)
    console = Console(stderr=True)
    with console.status("Writing synthetic hospitals as DICOM...") as status:
        paths = write_federation(Path(args.output), specs, progress=lambda msg: status.update(msg))
    for spec, path in zip(specs, paths):
        p = spec.profile
        print(
            f"{path}\t{spec.n_studies} studies, AAA prevalence {spec.aaa_prevalence:.0%}, "
            f"{p.matrix}x{p.matrix} at {p.fov_mm / p.matrix:.2f} mm, {p.slice_thickness_mm} mm slices, "
            f"{p.phase if p.contrast else 'non-contrast'}, noise {p.noise_hu} HU, {p.orientation}"
            f"{' feet-first' if p.feet_first else ''}, {p.transfer_syntax}, {p.layout} files"
            f"{', with ' + '/'.join(p.extras) if p.extras else ''}{', tortuous aortas' if p.tortuosity else ''}"
        )
    return 0


def _run_settings(args: argparse.Namespace) -> RunSettings:
    from fedaaa.common.config import RunSettings

    return RunSettings().with_overrides(
        num_server_rounds=args.rounds,
        local_epochs=args.local_epochs,
        learning_rate=args.learning_rate,
        proximal_mu=args.proximal_mu,
        seed=args.seed,
        sim_dp_epsilon=getattr(args, "dp_epsilon", None),
        device=getattr(args, "device", None),
        cache_dir=getattr(args, "cache_dir", None),
    )


# `fedaaa simulate --compare --quick`: a comparison meant to finish within 20 minutes on 2 CPU cores (docs/results.md)
QUICK = {"studies_per_site": 20, "rounds": 3, "local_epochs": 2}


def _cmd_simulate(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedaaa.simulations.simulate import SimulationPlan, simulate

    output = Path(args.output).resolve()
    if args.quick:
        if not args.compare:
            raise CLIError("--quick goes with --compare")
        defaults = build_parser().parse_args(["simulate", "--output", "x"])
        for name, value in QUICK.items():  # what the command line left at its default
            if getattr(args, name) == getattr(defaults, name):
                setattr(args, name, value)
    plan = SimulationPlan(
        output_dir=output,
        data_dir=Path(args.data).resolve() if args.data else output / "data",
        n_sites=args.sites,
        studies_per_site=args.studies_per_site,
        matrix=args.matrix,
        seed=args.seed,
    )
    if plan.n_sites < 2:
        raise CLIError("a federation needs at least 2 sites")
    console = Console(stderr=True)
    if args.compare:
        return _compare(plan, args, console)
    test = simulate(plan, _run_settings(args), console)
    print(
        f"Held-out test ({test['n']} studies, {test['n_aaa']} AAA): AUROC {test['auroc']:.3f}, "
        f"sensitivity {test['sensitivity']:.2f}, specificity {test['specificity']:.2f}, "
        f"diameter MAE {test['diameter_mae_mm']:.2f} mm"
    )
    print(
        f"Model: {output / 'global_model.safetensors'}\nHistory: {output / 'history.json'}\n"
        f"Learning curve: {output / 'learning_curve.png'}"
    )
    return 0


def _compare(plan: SimulationPlan, args: argparse.Namespace, console: Console) -> int:
    from fedaaa.simulations.compare import CompareSettings, compare, headline, sizes

    try:
        epsilons = tuple(float(e) for e in args.epsilons.split(",") if e.strip())
    except ValueError:
        raise CLIError(f"--epsilons must be comma-separated numbers, not {args.epsilons!r}") from None
    if not epsilons or any(not 0 < e <= 100 for e in epsilons):
        raise CLIError("--epsilons must be numbers in (0, 100]")
    options = CompareSettings(epsilons=epsilons, proximal_mu=args.compare_mu)
    arms = compare(plan, _run_settings(args), options, console)
    root = plan.output_dir / "compare"
    print((root / "comparison.md").read_text())
    for line in headline(arms, sizes(sorted(p for p in plan.data_dir.iterdir() if (p / "manifest.csv").is_file()))):
        print(f"- {line}")
    print(f"Table and plots: {root}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedaaa.common.cache import InputCache
    from fedaaa.common.config import PREPROCESS
    from fedaaa.simulations.baselines import train_centralised
    from fedaaa.simulations.simulate import round_table

    sites = [Path(s).resolve() for s in args.sites]
    for s in sites:
        if not (s / "manifest.csv").is_file():
            raise CLIError(f"{_shown_path(str(s))}: not a site folder (no manifest.csv)")
    output = Path(args.output).resolve()
    settings = _run_settings(args)
    cache = InputCache(PREPROCESS, settings.cache_dir or None)
    console = Console(stderr=True)
    groups = [sites] if args.mode == "pooled" else [[s] for s in sites]
    for group in groups:
        out = output if args.mode == "pooled" else output / group[0].name
        with console.status(f"{args.mode}: training on {', '.join(s.name for s in group)}"):
            history = train_centralised(group, out, settings, cache)
        console.print(round_table(history))
        print(f"Model: {out / 'global_model.safetensors'}")
    return 0


def _shown_path(path: str) -> str:
    """A path as given on the command line, safe to print: control characters (escape sequences, a
    newline that would forge a line) and undecodable bytes are shown escaped, and a long one is cut."""
    from fedaaa.common.text import printable

    return printable(path, 240, collapse=False)


def _cmd_predict(args: argparse.Namespace) -> int:
    from fedaaa.common.errors import describe
    from fedaaa.common.model import load_model
    from fedaaa.common.predict import DISCLAIMER, ReportRequest, predict_study
    from fedaaa.common.text import printable

    mf = load_model(args.model)
    report = ReportRequest(Path(args.report_dir)) if args.report_dir else None
    refused = 0
    for path in args.paths:
        try:  # one answer per input, whatever happens to it
            answer = predict_study(mf, path, report=report)
        except Exception as exc:
            answer = {
                "input": str(path),
                "error": f"{_shown_path(path)}: cannot be processed ({type(exc).__name__}: {describe(exc)})",
            }
        refused += "error" in answer
        if report is not None and "error" in answer:
            report.add_refused(path, answer)
        if args.json:
            print(json.dumps(answer), flush=True)  # ensure_ascii: every control character is escaped
            continue
        shown = _shown_path(path)
        if "error" in answer:
            print(f"{shown}: refused: {printable(answer['error'], 480)}", flush=True)
        elif not answer["measurable"]:
            found = "aorta found but not measurable" if answer["aorta_found"] else "aorta not found"
            print(f"{shown}: {found}: {printable(answer['reason'], 240)}", flush=True)
        else:
            verdict = "AAA" if answer["aaa_present"] else "no AAA"
            print(
                f"{shown}: {verdict} (probability {answer['aaa_probability']:.2f}), maximum diameter "
                f"{answer['max_diameter_mm']:.1f} mm ({answer['max_diameter_mm'] / 10:.1f} cm, outer to outer) - "
                f"{answer['category']}: {answer['follow_up']}",
                flush=True,
            )
            for w in answer["warnings"]:
                print(f"  warning: {printable(w, 200)}", flush=True)
    if report is not None:
        index = report.finish()
        if not args.json:
            print(f"report: {_shown_path(str(index))}")
    if not args.json:
        print(DISCLAIMER)
    return EXIT_REFUSED if refused else 0


def _progress_bar(console: Console) -> Progress:
    from fedaaa.common.progress import progress_bar

    return progress_bar(console, transient=True)


def _cmd_site_check(args: argparse.Namespace) -> int:
    from rich.console import Console

    from fedaaa.common.cache import InputCache
    from fedaaa.common.config import PREPROCESS
    from fedaaa.common.site import Site
    from fedaaa.common.site_check import check_site

    site = Site(args.site)  # a manifest error is reported before any progress bar
    console = Console(stderr=True)
    cache = InputCache(PREPROCESS, Path(args.cache_dir) if args.cache_dir else None)
    if console.is_terminal:
        with _progress_bar(console) as bar:
            task = bar.add_task("Checking studies", total=len(site.studies))
            report = check_site(
                site, cache, args.workers, lambda done, total: bar.update(task, completed=done, total=total)
            )
    else:  # no bar on a pipe or a log file: stderr then holds nothing but an error line, if any
        report = check_site(site, cache, args.workers)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        _print_site_report(report)
    if not report["summary"]["usable"]:
        raise CLIError(f"{_shown_path(args.site)}: no usable study in this site")
    return 0


def _print_site_report(report: dict) -> None:
    """The report as tables. Every cell is a rich ``Text`` of printable, capped text: a study id, reason
    or warning holding ``[/bold]`` or an escape sequence is shown as written, never interpreted."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from fedaaa.common.text import printable

    def cell(value: object, limit: int = 200) -> Text:
        return Text(printable(value, limit))

    out = Console()
    s = report["summary"]
    out.print(f"[bold]{int(s['usable'])} of {int(s['studies'])} studies usable[/bold], {int(s['refused'])} refused")
    refused = [r for r in report["studies"] if r["status"] == "refused"]
    if refused:
        table = Table("study", "split", "refused because", title="Refused studies")
        for r in refused:
            table.add_row(cell(r["study_id"], 80), cell(r["split"]), cell(r.get("reason", ""), 480))
        out.print(table)
    warned = [r for r in report["studies"] if r.get("warnings")]
    if warned:
        table = Table("study", "warnings", title="Usable, with warnings")
        for r in warned:
            table.add_row(cell(r["study_id"], 80), cell("; ".join(r["warnings"]), 480))
        out.print(table)
    table = Table("measure", "value", title="Data quality summary (no identifiers: shareable with a coordinator)")

    def row(name: str, value: str) -> None:
        table.add_row(cell(name), cell(value, 480))

    def counts(values: dict, sep: str = ", ") -> str:
        return sep.join(f"{k}: {v}" for k, v in values.items()) or "-"

    labels = s["labels"]
    row("labels", f"{labels['aaa']} AAA / {labels['no_aaa']} no AAA (prevalence {labels['prevalence']})")
    row("splits", ", ".join(f"{k} {v['usable']}/{v['studies']}" for k, v in s["splits"].items()))
    for key, unit in (
        ("diameter_mm", "mm"),
        ("slice_spacing_mm", "mm"),
        ("slice_thickness_mm", "mm"),
        ("pixel_spacing_mm", "mm"),
        ("slices", ""),
    ):
        r = s[key]
        row(
            key.replace("_mm", "").replace("_", " "),
            f"{r['min']}-{r['max']} {unit} (median {r['median']})" if r else "-",
        )
    row("diameter categories", counts(s["diameter_categories"]))
    row("manufacturers", counts(s["manufacturers"]))
    row("contrast (header)", counts(s["contrast_header"]))
    row("transfer syntaxes", counts(s["transfer_syntaxes"]))
    row("refusal reasons", counts(s["refusal_reasons"], "; "))
    row("warnings", counts(s["warnings"], "; "))
    out.print(table)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedaaa", description="Federated AAA detection and measurement on CT.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    from fedaaa.simulations import defaults as sim

    def federation_flags(p: argparse.ArgumentParser) -> None:
        p.add_argument("--sites", type=int, default=sim.DEFAULT_SITES, help="number of hospitals (default %(default)s)")
        p.add_argument(
            "--studies-per-site",
            type=int,
            default=sim.DEFAULT_STUDIES_PER_SITE,
            help="mean studies per hospital (default %(default)s)",
        )
        p.add_argument(
            "--matrix",
            type=int,
            default=sim.DEFAULT_MATRIX,
            help="in-plane matrix; 512 for realistic series (default %(default)s)",
        )
        p.add_argument(
            "--seed", type=int, default=sim.DEFAULT_SEED, help="seed for data and training (default %(default)s)"
        )

    p = sub.add_parser("synth", help="write synthetic hospitals as DICOM site folders")
    p.add_argument("--output", required=True, help="folder to write the site folders into")
    federation_flags(p)
    p.set_defaults(func=_cmd_synth)

    from fedaaa.common.config import RunSettings

    d = RunSettings()
    p = sub.add_parser("simulate", help="run a whole federation of synthetic hospitals on this machine")
    p.add_argument("--output", required=True, help="run folder: global_model.safetensors, history.json, plots")
    p.add_argument("--data", help="where the synthetic hospitals live (default OUTPUT/data; reused when present)")
    federation_flags(p)
    p.add_argument(
        "--rounds", type=int, default=d.num_server_rounds, help=f"FedAvg rounds (default {d.num_server_rounds})"
    )
    p.add_argument(
        "--local-epochs",
        type=int,
        default=d.local_epochs,
        help=f"epochs per round at each hospital (default {d.local_epochs})",
    )
    p.add_argument(
        "--learning-rate", type=float, default=d.learning_rate, help=f"AdamW learning rate (default {d.learning_rate})"
    )
    p.add_argument("--proximal-mu", type=float, default=d.proximal_mu, help="FedProx mu; 0 is FedAvg (default 0)")
    p.add_argument(
        "--dp-epsilon",
        help="DP-SGD at every simulated hospital with this target epsilon for the run, or one per site ('8,3,0')",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="run FedAvg, FedProx, pooled, local-only and FedAvg with DP at each --epsilons on the same hospitals; "
        "write OUTPUT/compare/comparison.md, .csv and plots",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"smaller defaults for --compare (studies per site {QUICK['studies_per_site']}, rounds {QUICK['rounds']}, "
        f"local epochs {QUICK['local_epochs']}): meant to finish within 20 minutes on 2 CPU cores",
    )
    p.add_argument("--epsilons", default="1,3,8", help="--compare: the DP arms' epsilons (default %(default)s)")
    p.add_argument("--compare-mu", type=float, default=0.01, help="--compare: FedProx mu (default %(default)s)")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser(
        "train",
        help="train without federation on site folders: pooled (all data in one place) or local-only (each site alone)",
    )
    p.add_argument("sites", nargs="+", metavar="SITE", help="site folders (manifest.csv and studies)")
    p.add_argument("--mode", choices=("pooled", "local"), required=True, help="pooled: one model; local: one per site")
    p.add_argument("--output", required=True, help="folder for the model (local: one subfolder per site)")
    p.add_argument(
        "--rounds", type=int, default=d.num_server_rounds, help="blocks of --local-epochs epochs (default %(default)s)"
    )
    p.add_argument("--local-epochs", type=int, default=d.local_epochs, help="epochs per block (default %(default)s)")
    p.add_argument(
        "--learning-rate", type=float, default=d.learning_rate, help="AdamW learning rate (default %(default)s)"
    )
    p.add_argument("--proximal-mu", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=d.seed, help="training seed (default %(default)s)")
    p.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    p.add_argument(
        "--cache-dir", default=None, help="preprocessed-input cache (default FEDAAA_CACHE_DIR or ~/.cache/fedaaa)"
    )
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("predict", help="run a model on CT studies (DICOM folders, multi-frame files, NIfTI)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="study folders, Enhanced CT files or .nii/.nii.gz files")
    p.add_argument("--model", required=True, help="a FedAAA model file (.safetensors)")
    p.add_argument("--json", action="store_true", help="one JSON object per input, in input order")
    p.add_argument(
        "--report-dir",
        metavar="DIR",
        help="write per study a cross-section at the maximum with the caliper, a coronal/sagittal overview, "
        "and DIR/index.html for the batch",
    )
    p.set_defaults(func=_cmd_predict)

    site = sub.add_parser("site", help="a hospital's site folder").add_subparsers(dest="site_command", required=True)
    p = site.add_parser("check", help="validate a site's manifest and every study; print a data-quality report")
    p.add_argument("site", metavar="SITE", help="site folder holding manifest.csv")
    p.add_argument("--json", action="store_true", help="the report as JSON: 'summary' (no identifiers) and 'studies'")
    p.add_argument("--workers", type=int, default=None, help="parallel decoding processes (default: up to 4 CPUs)")
    p.add_argument(
        "--cache-dir", help="where preprocessed inputs are cached (default $FEDAAA_CACHE_DIR or ~/.cache/fedaaa)"
    )
    p.set_defaults(func=_cmd_site_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one command; any failure is one `error:` line on stderr and exit code 2 (a traceback only with
    ``--debug``)."""
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s"
    )
    from fedaaa.common.errors import ConfigError, StudyError, cap_sentence, describe
    from fedaaa.simulations.federation import FederationError

    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ConfigError, StudyError, FederationError, OSError) as err:
        if args.debug:
            raise
        print(f"error: {cap_sentence(err)}", file=sys.stderr)
        return EXIT_REFUSED
    except Exception as err:  # a failure nothing foresaw: still one line, the traceback with --debug
        if args.debug:
            raise
        print(
            f"error: unexpected failure ({type(err).__name__}: {describe(err)}); run with --debug for details",
            file=sys.stderr,
        )
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
