"""The `trh` command line. Subcommands are added as the layers below them land."""

from __future__ import annotations

import argparse
import json
import math
import sys


def _format_default(value) -> str:
    if isinstance(value, float) and math.isinf(value):
        return "inf"
    return repr(value)


def cmd_methods(args) -> int:
    from methods import list_methods

    rows = list_methods()
    if args.name:
        known = [r["name"] for r in rows]
        rows = [r for r in rows if r["name"] in args.name]
        missing = sorted(set(args.name) - set(known))
        if missing:
            print(f"trh methods: unknown method(s) {missing}; registered: {', '.join(known)}", file=sys.stderr)
            return 2
    if args.json:
        print(json.dumps(rows, indent=2, default=_format_default))
        return 0
    for row in rows:
        print(f"{row['name']:<14} {row['description']}")
        print(f"{'':<14} ref: {row['reference']}")
        for p in row["params"]:
            line = f"{'':<16}{p['name']} = {_format_default(p['default'])}  ({p['type']})"
            print(line + (f"  — {p['doc']}" if args.verbose else ""))
        print()
    return 0


def cmd_train(args) -> int:
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from harness.config import ConfigError, compose
    from harness.store import RunInUse
    from harness.train import run, summary_line
    from methods import MethodConfigError

    try:
        cfg = compose(args.overrides)
        status = run(cfg)
    except (HydraException, OmegaConfBaseException, ConfigError, MethodConfigError, RunInUse) as err:
        print(f"trh train: {err}", file=sys.stderr)
        return 2
    print(f"run folder: {status['run_dir']}")
    print(summary_line(status))
    return 0 if status["state"] in ("done", "collapsed") else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="trh", description="trust-region-harness")
    sub = parser.add_subparsers(dest="command", required=True)
    methods = sub.add_parser("methods", help="list the registered trust-region methods and their parameters")
    methods.add_argument("name", nargs="*", help="only these methods")
    methods.add_argument("--json", action="store_true", help="machine-readable output")
    methods.add_argument("-v", "--verbose", action="store_true", help="also print each parameter's meaning")
    methods.set_defaults(func=cmd_methods)
    train = sub.add_parser("train", help="one training run on the embedded default (Hydra overrides allowed)",
                           description="e.g. trh train method=cppo setting=base_s seed=1 method.delta=0.2")
    train.add_argument("overrides", nargs="*", help="Hydra overrides key=value")
    train.set_defaults(func=cmd_train)
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
