"""The `fedaaa` command: synth, simulate, train, predict, site check, federation, hospital. Errors are one line on stderr and exit code 2."""

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


def _add_lr_schedule(p: argparse.ArgumentParser, default: float) -> None:
    p.add_argument(
        "--final-lr-factor",
        type=float,
        default=default,
        help="the learning rate falls along a half cosine to this share of it in the last round or block "
        "(1: constant; default %(default)s)",
    )


def _run_settings(args: argparse.Namespace) -> RunSettings:
    from fedaaa.common.config import RunSettings

    return RunSettings().with_overrides(
        num_server_rounds=args.rounds,
        local_epochs=args.local_epochs,
        learning_rate=args.learning_rate,
        final_lr_factor=args.final_lr_factor,
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
    if args.pretrain_studies < 0 or args.pretrain_rounds < 0:
        raise CLIError("--pretrain-studies and --pretrain-rounds must be 0 or more")
    options = CompareSettings(
        epsilons=epsilons,
        proximal_mu=args.compare_mu,
        pretrain_studies=args.pretrain_studies,
        pretrain_rounds=args.pretrain_rounds,
    )
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
    if args.max_minutes is not None and not 0 < args.max_minutes <= 7 * 24 * 60:
        raise CLIError(f"--max-minutes must be above 0 and at most a week, not {args.max_minutes:g}")
    max_seconds = None if args.max_minutes is None else 60 * args.max_minutes
    groups = [sites] if args.mode == "pooled" else [[s] for s in sites]
    for group in groups:
        out = output if args.mode == "pooled" else output / group[0].name
        with console.status(f"{args.mode}: training on {', '.join(s.name for s in group)}"):
            history = train_centralised(group, out, settings, cache, max_seconds=max_seconds)
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


def _federation_files(args: argparse.Namespace):  # noqa: ANN202 - FederationFiles, imported lazily
    from fedaaa.common.pki import FederationFiles

    return FederationFiles(Path(args.dir).resolve())


def _cmd_federation_init(args: argparse.Namespace) -> int:
    from fedaaa.common.deploy import coordinator_address, write_connection
    from fedaaa.common.pki import init_federation

    files = init_federation(Path(args.dir).resolve(), args.address)
    address = coordinator_address(files, args.port)
    write_connection(files, address)
    print(f"CA certificate (give it to every hospital): {files.ca_cert}")
    print(f"SuperLink certificate for {', '.join(args.address)}: {files.server_cert}")
    print(f"Private keys (0600, never leave this machine): {files.ca_key}, {files.server_key}")
    print(f"flwr connection '{address}': FLWR_HOME={files.flwr_home}")
    print(f"Next: fedaaa federation superlink --dir {files.root} --port {args.port}")
    return 0


def _cmd_federation_add_site(args: argparse.Namespace) -> int:
    import shutil
    import subprocess

    from fedaaa.common.deploy import flower_env, register_command
    from fedaaa.common.pki import check_public_key, check_site_name, new_site_key

    files = _federation_files(args)
    if not files.ca_cert.is_file():
        raise CLIError(f"{files.root}: no federation there; run `fedaaa federation init` first")
    name = check_site_name(args.name)
    public = files.site_public_key(name)
    if public.exists():
        raise CLIError(f"site {name!r} already has a key in {files.site_dir(name)}")
    if args.public_key:  # the hospital made its own key pair: its private key never left the hospital
        check_public_key(Path(args.public_key))
        public.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(args.public_key, public)
        print(f"Public key of {name}: {public}")
    else:
        new_site_key(files.site_key(name), public)
        shutil.copyfile(files.ca_cert, files.site_dir(name) / "ca.crt")
        print(f"Key pair of {name}: {files.site_key(name)} (0600) and {public}")
        print(
            f"Hand {files.site_key(name)} and {files.site_dir(name) / 'ca.crt'} to the hospital over a secure channel."
        )
    cmd = register_command(files, public)
    if not args.register:
        print(f"Register it while the SuperLink runs: FLWR_HOME={files.flwr_home} {' '.join(cmd)}")
        return 0
    done = subprocess.run(cmd, env=flower_env(files.flwr_home), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        last = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
        raise CLIError(f"registering {name} with the SuperLink failed: {last[0]}")
    print(f"{name} registered with the SuperLink.")
    return 0


def _cmd_federation_keygen(args: argparse.Namespace) -> int:
    from fedaaa.common.pki import new_site_key

    out = Path(args.out).resolve()
    new_site_key(out / "auth.key", out / "auth.key.pub")
    print(f"Private key (0600, stays here): {out / 'auth.key'}")
    print(
        f"Send this public key to the coordinator (fedaaa federation add-site NAME --public-key): {out / 'auth.key.pub'}"
    )
    return 0


def _cmd_federation_superlink(args: argparse.Namespace) -> int:
    from fedaaa.common.deploy import INSECURE_WARNING, flower_env, run_logged, superlink_command

    files = _federation_files(args)
    cmd = superlink_command(files, host=args.host, port=args.port, insecure=args.insecure)
    (files.root / "state").mkdir(parents=True, exist_ok=True)
    if args.insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    return run_logged(cmd, flower_env(files.flwr_home), files.root / "logs" / "superlink.log")


def _app_dir(given: str | None) -> Path:
    import tomllib

    def is_app(p: Path) -> bool:
        try:
            return "flwr" in tomllib.loads((p / "pyproject.toml").read_text()).get("tool", {})
        except (OSError, tomllib.TOMLDecodeError):
            return False

    import fedaaa

    candidates = [Path(given)] if given else [Path.cwd(), Path(fedaaa.__file__).resolve().parents[1]]
    for c in candidates:
        if is_app(c):
            return c.resolve()
    raise CLIError(f"{candidates[0]}: not the FedAAA app folder (its pyproject.toml); pass --app")


def _cmd_federation_run(args: argparse.Namespace) -> int:
    import subprocess

    from fedaaa.common.config import RunSettings
    from fedaaa.common.deploy import DEFAULT_PORT, coordinator_address, flower_env, run_command, write_connection

    files = _federation_files(args)
    output = Path(args.output_dir)
    if not output.is_absolute():
        raise CLIError(f"--output-dir {args.output_dir!r}: give an absolute folder on the coordinator")
    if args.superlink or args.insecure or not (files.flwr_home / "config.toml").is_file():
        address = args.superlink or (
            coordinator_address(files, DEFAULT_PORT) if files.server_cert.is_file() else f"127.0.0.1:{DEFAULT_PORT}"
        )
        write_connection(files, address, insecure=args.insecure)  # otherwise the connection `init` wrote
    run_config: dict[str, object] = {"output-dir": str(output)}
    for key, value in (
        ("num-server-rounds", args.rounds),
        ("strategy", args.strategy),
        ("min-nodes", args.min_hospitals),
        ("round-timeout", args.round_timeout),
    ):
        if value is not None:
            run_config[key] = value
    for item in args.set or []:
        key, sep, value = item.partition("=")
        if not sep:
            raise CLIError(f"--set {item!r}: use KEY=VALUE")
        run_config[key] = value
    settings = RunSettings.from_run_config(run_config)  # refuses unknown keys and bad values here, in one line
    if settings.initial_model:  # the ServerApp reads it on this machine: refuse a bad file before Flower starts
        from fedaaa.common.model import starting_state

        starting_state(settings.initial_model)
    typed = settings.to_run_config()
    cmd = run_command(_app_dir(args.app), {k: typed[k.replace("_", "-")] for k in run_config})
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    return subprocess.run(cmd, env=flower_env(files.flwr_home), cwd=_app_dir(args.app)).returncode


def _cmd_hospital_start(args: argparse.Namespace) -> int:
    from fedaaa.common.deploy import INSECURE_WARNING, HospitalConfig, flower_env, run_hospital

    config = HospitalConfig.load(
        Path(args.config) if args.config else None,
        overrides={"superlink": args.superlink, "data_path": args.data_path, "state_dir": args.state_dir},
    )
    print(config.summary(), file=sys.stderr, flush=True)
    if config.insecure:
        print(INSECURE_WARNING, file=sys.stderr, flush=True)
    cmd = config.supernode_command()
    if args.dry_run:
        print(" ".join(cmd))
        return 0
    state = Path(config.state_dir)
    state.mkdir(parents=True, exist_ok=True)
    return run_hospital(config, flower_env(state / "flwr"), state / "logs" / "supernode.log")


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
    _add_lr_schedule(p, d.final_lr_factor)
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
    p.add_argument(
        "--pretrain-studies",
        type=int,
        default=0,
        help="--compare: first pre-train on this many public synthetic studies (other patients, no privacy cost) "
        "and start every arm from that model (default 0: random start)",
    )
    p.add_argument(
        "--pretrain-rounds",
        type=int,
        default=0,
        help="--compare: blocks of --local-epochs the pre-training runs (default 0: as many as --rounds)",
    )
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
    _add_lr_schedule(p, d.final_lr_factor)
    p.add_argument("--proximal-mu", type=float, default=0.0, help=argparse.SUPPRESS)
    p.add_argument("--seed", type=int, default=d.seed, help="training seed (default %(default)s)")
    p.add_argument("--device", default=None, help="auto (default), cpu or cuda")
    p.add_argument(
        "--max-minutes",
        type=float,
        default=None,
        help="stop after the block during which this much training time has passed (default: all --rounds)",
    )
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

    fed = sub.add_parser("federation", help="the coordinator's federation: keys, SuperLink, runs").add_subparsers(
        dest="federation_command", required=True
    )
    p = fed.add_parser("init", help="create the federation's CA and the SuperLink's TLS certificate")
    p.add_argument("--dir", required=True, help="the federation folder (keys, SuperLink state, logs)")
    p.add_argument(
        "--address",
        action="append",
        required=True,
        help="an IP address or host name hospitals reach the SuperLink at (repeat for several)",
    )
    p.add_argument("--port", type=int, default=9092, help="the SuperLink's port (default %(default)s)")
    p.set_defaults(func=_cmd_federation_init)
    p = fed.add_parser("add-site", help="a hospital's node key pair (or its own public key), and its registration")
    p.add_argument("name", help="the hospital's name in the federation folder (a-z, 0-9, '-')")
    p.add_argument("--dir", required=True, help="the federation folder")
    p.add_argument("--public-key", help="register the hospital's own public key (from `fedaaa federation keygen`)")
    p.add_argument("--register", action="store_true", help="register the key with the running SuperLink now")
    p.set_defaults(func=_cmd_federation_add_site)
    p = fed.add_parser("keygen", help="a hospital makes its own node key pair; only the public key leaves it")
    p.add_argument("--out", required=True, help="folder for auth.key (0600) and auth.key.pub")
    p.set_defaults(func=_cmd_federation_keygen)
    p = fed.add_parser("superlink", help="run the SuperLink: TLS and node authentication unless --insecure")
    p.add_argument("--dir", required=True, help="the federation folder")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default %(default)s; 0.0.0.0: all)")
    p.add_argument("--port", type=int, default=9092, help="port (default %(default)s)")
    p.add_argument("--insecure", action="store_true", help="local trials only: no TLS, no node authentication")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.set_defaults(func=_cmd_federation_superlink)
    p = fed.add_parser("run", help="start a training run on the SuperLink and follow it")
    p.add_argument("--dir", required=True, help="the federation folder")
    p.add_argument("--output-dir", required=True, help="absolute folder for checkpoints, history and the model")
    p.add_argument("--rounds", type=int, help=f"FedAvg rounds (default {d.num_server_rounds})")
    p.add_argument("--strategy", help="fedavg (default), fedprox, median, trimmed-mean or krum")
    p.add_argument("--min-hospitals", type=int, help=f"hospitals a round needs (default {d.min_nodes})")
    p.add_argument(
        "--round-timeout", type=float, help=f"seconds a round waits for replies (default {d.round_timeout:g})"
    )
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="any other run-config key (repeatable)")
    p.add_argument("--superlink", help="HOST:PORT (default: the address `init` recorded)")
    p.add_argument("--insecure", action="store_true", help="talk to an --insecure SuperLink (local trials)")
    p.add_argument("--app", help="the FedAAA app folder (default: this one)")
    p.add_argument("--dry-run", action="store_true", help="print the command instead of running it")
    p.set_defaults(func=_cmd_federation_run)

    hosp = sub.add_parser("hospital", help="a hospital's node").add_subparsers(dest="hospital_command", required=True)
    p = hosp.add_parser(
        "start",
        help="join the federation: settings from --config, FEDAAA_* environment variables and these flags",
    )
    p.add_argument("--config", help="hospital.toml (see docs/hospital-it.md)")
    p.add_argument("--superlink", help="the coordinator's HOST:PORT")
    p.add_argument("--data-path", help="the site folder (read-only)")
    p.add_argument("--state-dir", help="the site's writable state folder")
    p.add_argument("--dry-run", action="store_true", help="check the settings and print the command")
    p.set_defaults(func=_cmd_hospital_start)

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
