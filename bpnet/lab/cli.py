"""``bpnet lab``: list the scenarios, run one (optionally plotting it), or run them all.

    bpnet lab list
    bpnet lab show NAME
    bpnet lab run NAME [--seed S] [--plot out.png] [--json out.json]
    bpnet lab run --all [--seed S]

``bpnet.cli`` registers this through :func:`register`; :func:`main` runs it on
its own (``python -m bpnet.lab.cli ...``).  The exit code is 0 when every
check of every scenario run passed, 1 otherwise.
"""
from __future__ import annotations

import argparse
import json
import math
import sys

from .. import cli_args as types
from ..errors import ConfigError


def register(subparsers) -> argparse.ArgumentParser:
    """Add the ``lab`` command (with ``list``, ``show``, ``run``) to a subparsers object."""
    p = subparsers.add_parser("lab", help="reproduce classic backprop failures, diagnose and repair them",
                              formatter_class=types.HelpFormatter,
                              description="The failure lab: each scenario makes one classic failure happen, "
                                          "lets the doctor name it, and applies the standard remedy.")
    _build(p)
    return p


def _build(p):
    sub = p.add_subparsers(dest="lab_command", metavar="{list,show,run}")
    sub.required = True
    ls = sub.add_parser("list", help="the scenarios, with the doctor code each should produce")
    ls.set_defaults(func=_list)
    show = sub.add_parser("show", help="a scenario's mechanism, configurations and checks")
    show.add_argument("name", help="scenario name (see `bpnet lab list`)")
    show.set_defaults(func=_show)
    run = sub.add_parser("run", help="run one scenario (or --all) and print the verdict",
                         formatter_class=types.HelpFormatter)
    run.add_argument("name", nargs="?", help="scenario name (see `bpnet lab list`)")
    run.add_argument("--all", action="store_true", help="run every scenario and print a summary table")
    run.add_argument("--seed", type=types.non_negative_int, default=0, help="the one seed of the runs")
    run.add_argument("--plot", metavar="PNG", type=types.output_path,
                     help="save broken vs repaired curves to this PNG (one scenario)")
    run.add_argument("--json", metavar="FILE", type=types.output_path, help="write the results as JSON")
    run.add_argument("--no-auto-repair", dest="auto_repair", action="store_false",
                     help="skip the third run, the broken model handed to bpnet.doctor.repair")
    run.set_defaults(func=_run)


def _list(args) -> int:
    from . import scenarios
    items = scenarios()
    width = max(len(s.name) for s in items)
    code_w = max(len(s.expected_code) for s in items)
    print(f"{'scenario':<{width}}  {'doctor code':<{code_w}}  title")
    for s in items:
        print(f"{s.name:<{width}}  {s.expected_code:<{code_w}}  {s.title}")
    print(f"\n{len(items)} scenarios; `bpnet lab show NAME` explains one, `bpnet lab run NAME` runs it.")
    return 0


def _scenario(name: str):
    """The scenario called ``name``, or a ConfigError that suggests the nearest name."""
    from . import get, scenarios
    names = [s.name for s in scenarios()]
    if name not in names:
        raise ConfigError(f"no lab scenario called {name!r}{types.did_you_mean(name, names)} "
                          "(`bpnet lab list` lists them)")
    return get(name)


def _show(args) -> int:
    print(_scenario(args.name).describe())
    return 0


def _run(args) -> int:
    from . import run_all, summary_table
    if args.all == bool(args.name):
        raise SystemExit("bpnet lab run: give one scenario NAME or --all")
    if args.all:
        if args.plot:
            raise SystemExit("bpnet lab run: --plot draws one scenario; name it instead of --all")

        def progress(r):
            print(f"  {r.scenario:<28} {'ok' if r.ok else 'FAILED':<6} {r.seconds:6.2f} s", file=sys.stderr,
                  flush=True)
        results = run_all(seed=args.seed, progress=progress, auto_repair=args.auto_repair)
        print(summary_table(results))
        total = sum(r.seconds for r in results)
        print(f"\n{sum(r.ok for r in results)}/{len(results)} scenarios passed all three checks "
              f"(seed {args.seed}, {total:.1f} s)")
        if args.auto_repair:
            print(f"{sum(bool(r.auto_ok) for r in results)}/{len(results)} auto-repaired by bpnet.doctor.repair "
                  "(or, for a bug in the user's code, named)")
    else:
        result = _scenario(args.name).run(args.seed, auto_repair=args.auto_repair)
        results = [result]
        print(result.summary())
        if args.plot:
            from .plot import plot_result
            plot_result(result, args.plot)
            print(f"plot written to {args.plot}")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(_plain([r.to_dict() for r in results]), fh, indent=1)
        print(f"results written to {args.json}")
    return 0 if all(r.ok for r in results) else 1


def _plain(value):
    """JSON-safe copy: NumPy scalars and arrays become Python ones, NaN/Inf become strings."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "tolist"):
        return _plain(value.tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


def main(argv=None) -> int:
    """``bpnet lab`` on its own: ``main(["run", "lr_too_high"])``."""
    from ..errors import BpnetError
    p = argparse.ArgumentParser(prog="bpnet lab", description="The failure lab.")
    _build(p)
    args = p.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except BpnetError as exc:
        print(f"bpnet lab: error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":      # pragma: no cover
    raise SystemExit(main())
