"""The `fedaaa` command: synth, simulate, predict. Errors are one line on stderr and exit code 2."""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

EXIT_REFUSED = 2


class CLIError(Exception):
    """A user-facing failure: printed as `error: <message>`."""


def _cmd_synth(args) -> int:
    from rich.console import Console

    from simulations.synth import default_sites, write_federation

    specs = default_sites(args.sites, args.studies_per_site, seed=args.seed, matrix=args.matrix)
    console = Console(stderr=True)
    with console.status("Writing synthetic hospitals as DICOM...") as status:
        paths = write_federation(Path(args.output), specs, progress=lambda msg: status.update(msg))
    for spec, path in zip(specs, paths):
        p = spec.profile
        print(
            f"{path}\t{spec.n_studies} studies, AAA prevalence {spec.aaa_prevalence:.0%}, "
            f"{p.matrix}x{p.matrix} at {p.fov_mm / p.matrix:.2f} mm, {p.slice_thickness_mm} mm slices, "
            f"{'contrast' if p.contrast else 'non-contrast'}, noise {p.noise_hu} HU"
        )
    return 0


def _run_settings(args):
    from common.config import RunSettings

    return RunSettings().with_overrides(
        num_server_rounds=args.rounds, local_epochs=args.local_epochs, learning_rate=args.learning_rate,
        proximal_mu=args.proximal_mu, seed=args.seed,
    )


def _cmd_simulate(args) -> int:
    from rich.console import Console

    from simulations.simulate import SimulationPlan, simulate

    output = Path(args.output).resolve()
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
    test = simulate(plan, _run_settings(args), console)
    print(
        f"Held-out test ({test['n']} studies, {test['n_aaa']} AAA): AUROC {test['auroc']:.3f}, "
        f"sensitivity {test['sensitivity']:.2f}, specificity {test['specificity']:.2f}, "
        f"diameter MAE {test['diameter_mae_mm']:.2f} mm"
    )
    print(f"Model: {output / 'global_model.safetensors'}\nHistory: {output / 'history.json'}\n"
          f"Learning curve: {output / 'learning_curve.png'}")
    return 0


def _cmd_predict(args) -> int:
    from common.model import load_model
    from common.predict import DISCLAIMER, predict_study

    mf = load_model(args.model)
    refused = 0
    for path in args.paths:
        answer = predict_study(mf, path)
        refused += "error" in answer
        if args.json:
            print(json.dumps(answer), flush=True)
        elif "error" in answer:
            print(f"{path}: refused: {answer['error']}")
        else:
            verdict = "AAA" if answer["aaa_present"] else "no AAA"
            print(
                f"{path}: {verdict} (probability {answer['aaa_probability']:.2f}), maximum diameter "
                f"{answer['max_diameter_mm']:.1f} mm ({answer['max_diameter_mm'] / 10:.1f} cm, outer to outer) - "
                f"{answer['category']}: {answer['follow_up']}"
            )
            for w in answer["warnings"]:
                print(f"  warning: {w}")
    if not args.json:
        print(DISCLAIMER)
    return EXIT_REFUSED if refused else 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="fedaaa", description="Federated AAA detection and measurement on CT.")
    parser.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
    sub = parser.add_subparsers(dest="command", required=True)

    def federation_flags(p, studies_default):
        p.add_argument("--sites", type=int, default=3, help="number of hospitals (default 3)")
        p.add_argument("--studies-per-site", type=int, default=studies_default, help=f"mean studies per hospital (default {studies_default})")
        p.add_argument("--matrix", type=int, default=128, help="in-plane matrix; 512 for realistic series (default 128)")
        p.add_argument("--seed", type=int, default=0, help="seed for data and training (default 0)")

    p = sub.add_parser("synth", help="write synthetic hospitals as DICOM site folders")
    p.add_argument("--output", required=True, help="folder to write the site folders into")
    federation_flags(p, 60)
    p.set_defaults(func=_cmd_synth)

    from common.config import RunSettings

    d = RunSettings()
    p = sub.add_parser("simulate", help="run a whole federation of synthetic hospitals on this machine")
    p.add_argument("--output", required=True, help="run folder: global_model.safetensors, history.json, plots")
    p.add_argument("--data", help="where the synthetic hospitals live (default OUTPUT/data; reused when present)")
    federation_flags(p, 60)
    p.add_argument("--rounds", type=int, default=d.num_server_rounds, help=f"FedAvg rounds (default {d.num_server_rounds})")
    p.add_argument("--local-epochs", type=int, default=d.local_epochs, help=f"epochs per round at each hospital (default {d.local_epochs})")
    p.add_argument("--learning-rate", type=float, default=d.learning_rate, help=f"AdamW learning rate (default {d.learning_rate})")
    p.add_argument("--proximal-mu", type=float, default=d.proximal_mu, help="FedProx mu; 0 is FedAvg (default 0)")
    p.set_defaults(func=_cmd_simulate)

    p = sub.add_parser("predict", help="run a model on CT studies (DICOM folders)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="study folders")
    p.add_argument("--model", required=True, help="a FedAAA model file (.safetensors)")
    p.add_argument("--json", action="store_true", help="one JSON object per input, in input order")
    p.set_defaults(func=_cmd_predict)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.debug else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from common.errors import ConfigError, StudyError
    from simulations.federation import FederationError

    try:
        return args.func(args)
    except (CLIError, ConfigError, StudyError, FederationError, OSError) as err:
        if args.debug:
            raise
        print(f"error: {err}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
