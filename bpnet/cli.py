"""The ``bpnet`` command line: ``bpnet train``, ``bpnet doctor RUN.json``, ``bpnet lab ...``.

Subcommands register themselves through :func:`register_subcommand`: a
function ``register(subparsers)`` that adds one parser and sets
``func=handler`` on it, where ``handler(args) -> int`` returns the exit code.
``bpnet lab`` is provided by ``bpnet.lab.cli.register`` when that module exists.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import inspect
import json
import math
import os
import sys

import numpy as np

from . import cli_args as types
from .callbacks import Callback
from .errors import BpnetError, ConfigError

SUBCOMMANDS: list = []

DATASETS = ("digits", "iris", "wine", "breast_cancer", "spirals", "moons", "xor")


def register_subcommand(register):
    """Add ``register(subparsers)`` to the CLI (usable as a decorator)."""
    SUBCOMMANDS.append(register)
    return register


def build_parser() -> argparse.ArgumentParser:
    from . import __version__
    parser = argparse.ArgumentParser(prog="bpnet", description="Train, diagnose and repair backprop networks.")
    parser.add_argument("--version", action="version", version=f"bpnet {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for register in SUBCOMMANDS:
        register(sub)
    return parser


def main(argv=None) -> int:
    """Run the CLI on ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        if getattr(args, "config", None):
            args = _apply_config(parser, args, argv)
        return int(args.func(args) or 0)
    except BrokenPipeError:                # `bpnet ... | head`: the reader has all it wanted
        sys.stdout = open(os.devnull, "w")
        return 0
    except (BpnetError, OSError) as exc:
        print(f"bpnet {args.command}: error: {exc}", file=sys.stderr)
        return 1




# --------------------------------------------------------------------------- bpnet train
def _load_dataset(name: str, seed: int):
    from . import data
    loaders = {"digits": data.load_digits, "iris": data.load_iris, "wine": data.load_wine,
               "breast_cancer": data.load_breast_cancer,
               "spirals": lambda: data.make_spirals(600, n_classes=3, noise=0.2, seed=seed),
               "moons": lambda: data.make_moons(400, noise=0.15, seed=seed),
               "xor": lambda: data.xor(400, noise=0.15, seed=seed)}
    return loaders[name]()


def _read_config(path) -> dict:
    """A JSON or TOML file of ``train`` options (keys as the flags, '-' or '_')."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except OSError as exc:
        raise ConfigError(f"--config {path}: cannot read it ({exc.strerror or exc})") from None
    try:
        if str(path).endswith(".toml"):
            import tomllib
            cfg = tomllib.loads(raw.decode())
            cfg = cfg.get("train", cfg)
        else:
            cfg = json.loads(raw.decode())
    except ValueError as exc:              # TOMLDecodeError and JSONDecodeError are ValueErrors
        kind = "TOML" if str(path).endswith(".toml") else "JSON"
        raise ConfigError(f"--config {path}: not valid {kind} ({exc})") from None
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the config must be a table/object of options")
    return {str(k).replace("-", "_"): v for k, v in cfg.items()}


def _apply_config(parser, args, argv):
    """Re-parse ``argv`` with the config file's options as the subcommand's defaults.

    Values of typed flags go in as text, so argparse checks them exactly as it
    checks the same flag on the command line.
    """
    sub = args._parser
    cfg = _read_config(args.config)
    actions = {a.dest: a for a in sub._actions if a.dest not in ("help", "config")}
    unknown = sorted(set(cfg) - set(actions))
    if unknown:
        raise ConfigError(f"{args.config}: unknown option(s) {unknown}; known: {sorted(actions)}")
    for key, value in cfg.items():
        if isinstance(value, (list, tuple)):
            value = ",".join(str(u) for u in value)
        if actions[key].type is not None and value is not None:
            value = str(value)
        cfg[key] = value
    sub.set_defaults(**cfg)              # the file fills the defaults; flags on the line win
    return parser.parse_args(argv)


class _EpochPrinter(Callback):
    """One line per epoch on stdout."""

    def __init__(self, epochs: int):
        self.epochs = epochs

    def on_epoch_end(self, epoch, logs=None):
        parts = [f"{k} {v:.4f}" for k, v in (logs or {}).items() if k not in ("time", "lr")]
        print(f"epoch {epoch + 1:>3}/{self.epochs}  " + "  ".join(parts), flush=True)


def _train(args) -> int:
    X, y = _load_dataset(args.dataset, args.seed)
    from .data import Standardizer, train_test_split
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=args.test_size, seed=args.seed,
                                                        stratify=True)
    scaler = Standardizer().fit(X_train)           # statistics of the training split only
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    n_classes = int(y.max()) + 1
    model = _build_model(args, n_classes)
    model.preprocessor = scaler

    callbacks = [] if args.quiet else [_EpochPrinter(args.epochs)]
    if args.checkpoint:
        from .callbacks import ModelCheckpoint
        callbacks.append(ModelCheckpoint(args.checkpoint, monitor="val_loss", save_best_only=True))
    # a diverging run overflows in every matmul; NumPy's warnings say nothing the run's own
    # numbers (and the doctor's NONFINITE_LOSS finding) do not say better, so they stay quiet
    with np.errstate(over="ignore", invalid="ignore", divide="ignore", under="ignore"):
        history = model.fit(X_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                            validation_split=args.val_split, callbacks=callbacks, verbose=0,
                            **_doctor_kwargs(args, model))
        result = model.evaluate(X_test, y_test)
    print(f"dataset {args.dataset}: {len(X_train)} train / {len(X_test)} test samples, "
          f"{X.shape[1]} features, {n_classes} classes")
    print(f"test loss {result['loss']:.4f}  test accuracy {result['accuracy']:.4f}")
    if getattr(history, "repair", None) is not None:
        print(history.repair)
    _report_nonfinite(history, args)
    if args.checkpoint:
        print(f"best checkpoint (lowest val_loss) written to {args.checkpoint}")
    _write_outputs(args, model, history, X_test)
    return 0


def _write_outputs(args, model, history, X_probe):
    """``--history-out`` (with the activation histograms, for ``bpnet doctor --html``) and ``--html``."""
    histograms = None
    if args.history_out or args.html:
        from .doctor.report import activation_histograms, repair_rows
        histograms = activation_histograms(model, X_probe[:256])
    if args.history_out:
        record = json.loads(history.to_json())
        record["activation_histograms"] = histograms
        if getattr(history, "repair", None) is not None:
            record["repairs"] = json.loads(json.dumps(repair_rows(history.repair), default=str))
        with open(args.history_out, "w") as fh:
            json.dump(record, fh, indent=1)
        print(f"history written to {args.history_out}")
    if args.html:
        history.report(args.html, histograms=histograms, title=f"bpnet train --dataset {args.dataset}")
        print(f"HTML report written to {args.html}")


def _build_model(args, n_classes):
    from . import Dense, Sequential
    from .layers import ACTIVATION_LAYERS
    from .optim import OPTIMIZERS
    layers = []
    for units in args.hidden:
        layers += [Dense(units, init=args.init), ACTIVATION_LAYERS[args.activation]()]
    layers.append(Dense(n_classes))
    model = Sequential(layers, seed=args.seed, backend=args.backend)
    opt_cls = OPTIMIZERS[args.optimizer]
    model.compile(loss="cross_entropy", optimizer=opt_cls(lr=args.lr) if args.lr is not None else opt_cls())
    return model


def _doctor_kwargs(args, model) -> dict:
    accepted = inspect.signature(model.fit).parameters
    kwargs = {}
    for flag in ("doctor", "detect_anomaly"):
        if getattr(args, flag):
            if flag not in accepted:
                raise ConfigError(f"--{flag.replace('_', '-')} needs the bpnet doctor, which this "
                                  "installation does not have")
            kwargs[flag] = True
    if getattr(args, "repair", False):
        kwargs["doctor"] = "repair"              # fit(doctor="repair"): the report is printed after the run
    return kwargs


def _report_nonfinite(history, args):
    """Say so when the training loss went NaN/Inf (NumPy's overflow warnings were silenced)."""
    losses = history.history.get("loss", [])
    bad = [i for i, v in enumerate(losses) if not math.isfinite(v)]
    if not bad:
        return
    print(f"the training loss became NaN/Inf in epoch {bad[0] + 1} (NumPy's overflow warnings are "
          "not shown); " + ("see the doctor's NONFINITE_LOSS finding above" if args.doctor else
                            "rerun with --doctor to diagnose it, or --detect-anomaly to name the layer"))


def _add_train_arguments(p):
    from .init import INITIALIZERS
    from .layers import ACTIVATION_LAYERS
    from .optim import OPTIMIZERS
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of options (flags given override it)")
    p.add_argument("--dataset", default="digits", type=types.choice("data set", DATASETS),
                   metavar="NAME", help="built-in data set: " + ", ".join(DATASETS))
    p.add_argument("--hidden", default="64,64", type=types.hidden_sizes, metavar="SIZES",
                   help="hidden layer sizes, comma separated; 'none' for no hidden layer")
    p.add_argument("--activation", default="relu", type=types.choice("activation", ACTIVATION_LAYERS),
                   metavar="NAME", help="hidden activation: " + ", ".join(ACTIVATION_LAYERS))
    p.add_argument("--init", default="he_normal", type=types.choice("initialiser", INITIALIZERS),
                   metavar="NAME", help="weight initialiser of the hidden layers")
    p.add_argument("--optimizer", default="adam", type=types.choice("optimizer", OPTIMIZERS),
                   metavar="NAME", help="optimizer: " + ", ".join(OPTIMIZERS))
    p.add_argument("--lr", type=types.positive_float, default=None,
                   help="learning rate (default: the optimizer's own)")
    p.add_argument("--epochs", type=types.positive_int, default=20, help="passes over the training data")
    p.add_argument("--batch-size", type=types.positive_int, default=32, help="samples per training step")
    p.add_argument("--seed", type=types.non_negative_int, default=0,
                   help="one seed for the split, the weights and the shuffling")
    p.add_argument("--test-size", type=types.fraction(low_inclusive=False), default=0.2,
                   help="fraction held out for the test score")
    p.add_argument("--val-split", type=types.fraction(low_inclusive=True), default=0.1,
                   help="fraction of the training split used for validation (0: none)")
    p.add_argument("--backend", default=None, choices=("numpy", "numba", "cupy", "auto"),
                   help="array backend (default: $BPNET_BACKEND, else auto: NumPy, and Numba for a run "
                        "long enough to repay loading it)")
    p.add_argument("--doctor", action="store_true", help="monitor the run and print the diagnosis")
    p.add_argument("--detect-anomaly", action="store_true", help="stop at the first NaN/Inf, naming the layer")
    p.add_argument("--repair", action="store_true",
                   help="let bpnet.doctor.repair diagnose the run, apply the remedy and retrain until the doctor "
                        "is quiet; prints what it changed")
    p.add_argument("--checkpoint", metavar="PATH", type=types.output_path,
                   help="save the best model (lowest val_loss) here")
    p.add_argument("--history-out", metavar="PATH", type=types.output_path,
                   help="write the training history as JSON (for `bpnet doctor`)")
    p.add_argument("--html", metavar="PATH", type=types.output_path,
                   help="write a self-contained HTML diagnosis report of the run")
    p.add_argument("--quiet", action="store_true", help="do not print a line per epoch")


@register_subcommand
def _register_train(sub):
    p = sub.add_parser("train", help="train an MLP on a built-in data set",
                       formatter_class=types.HelpFormatter,
                       description="Train a multilayer perceptron on a built-in data set. Features are "
                                   "standardised with statistics of the training split.")
    _add_train_arguments(p)
    p.set_defaults(func=_train, _parser=p)


# --------------------------------------------------------------------------- bpnet doctor
def _doctor(args) -> int:
    if args.env:
        from .env import show_versions
        show_versions()
        return 0
    if args.run is None:
        print("bpnet doctor: give a RUN.json saved with history.to_json(path), or --env")
        return 2
    from .history import History
    if not os.path.exists(args.run):
        raise ConfigError(f"{args.run}: no such file (write one with history.to_json(path) "
                          "or `bpnet train --history-out PATH`)")
    try:
        history = History.load_json(args.run)
    except (ValueError, TypeError, AttributeError) as exc:
        raise ConfigError(f"{args.run} is not a bpnet history JSON file: {exc}") from exc
    try:
        diagnose = importlib.import_module("bpnet.doctor").diagnose
    except (ImportError, AttributeError):
        print("bpnet doctor: the diagnosis module (bpnet.doctor.diagnose) is not available in this "
              "installation", file=sys.stderr)
        return 2
    result = diagnose(history)
    findings = list(result) if isinstance(result, (list, tuple)) else None
    print(f"{args.run}: {len(history)} epochs, {len(history.steps)} step records")
    if findings is None:
        print(result)
        return 0
    # fit(doctor=True) saves what it reported as the run went; a problem that passed (gradients
    # that exploded early, then settled) is no longer in the final signals but is still news
    known = {getattr(f, "key", None) for f in findings}
    recorded = [f for f in _recorded_findings(history) if getattr(f, "key", None) not in known]
    for finding in findings:
        print(finding)
    if recorded:
        print("reported while training (saved with the run):" if findings else
              "the final signals look healthy, but these were reported while training (saved with the run):")
        for finding in recorded:
            print(finding)
    elif not findings:
        print("no problems found")
    if args.html:
        extras = _record_extras(args.run)
        history.report(args.html, findings=list(findings) + recorded, title=os.path.basename(args.run),
                       histograms=extras.get("activation_histograms"), repairs=extras.get("repairs"))
        print(f"HTML report written to {args.html}")
    return 0


def _record_extras(path) -> dict:
    """What a run record holds beyond the History: activation histograms, repair attempts."""
    with open(path) as fh:
        record = json.load(fh)
    return {k: record.get(k) for k in ("activation_histograms", "repairs")}


def _recorded_findings(history) -> list:
    """The findings saved in a history file, as ``Finding`` objects when the doctor is installed."""
    try:
        from .doctor.findings import Finding
    except ImportError:
        Finding = None
    out = []
    for f in history.findings:
        if isinstance(f, dict) and Finding is not None:
            try:
                f = Finding.from_dict(f)
            except TypeError:          # not a finding bpnet wrote: show it as it is
                pass
        out.append(f)
    return out


@register_subcommand
def _register_doctor(sub):
    p = sub.add_parser("doctor", help="diagnose a saved training run", formatter_class=types.HelpFormatter,
                       description="Load a History saved with history.to_json(path) and print the diagnosis.")
    p.add_argument("run", metavar="RUN.json", nargs="?",
                   help="a run saved by `bpnet train --history-out` or history.to_json(path)")
    p.add_argument("--html", metavar="PATH", type=types.output_path,
                   help="also write a self-contained HTML report: diagnosis, findings, curves, gradients")
    p.add_argument("--env", action="store_true",
                   help="print versions, BLAS, threads and backend choice (bpnet.show_versions)")
    p.set_defaults(func=_doctor)


# --------------------------------------------------------------------------- bpnet build-kernels
def _build_kernels(args) -> int:
    from .backends import numba_aot
    if importlib.util.find_spec("numba") is None:
        raise ConfigError("building the kernels needs Numba: run `pip install numba`")
    target = numba_aot.module_dir()
    if numba_aot.is_built(target):
        print(f"bpnet: the ahead-of-time kernels for this machine are built already: {target}")
        return 0
    print("bpnet: compiling the numba kernels ahead of time for this CPU (10-30 s) ...",
          flush=True)
    numba_aot.build()
    return 0


@register_subcommand
def _register_build_kernels(sub):
    p = sub.add_parser("build-kernels", help="compile the numba kernels ahead of time (less memory, "
                                             "faster start)", formatter_class=types.HelpFormatter,
                       description="Compile the numba backend's kernels into an extension module for "
                                   "this CPU, which later runs load without Numba or LLVM. It goes "
                                   "into $BPNET_CACHE_DIR (default ~/.cache/bpnet); BPNET_AOT=0 keeps "
                                   "the backend on the JIT kernels, whose Adam runs on two threads "
                                   "beside MKL.")
    p.set_defaults(func=_build_kernels)


# --------------------------------------------------------------------------- bpnet lab
@register_subcommand
def _register_lab(sub):
    """``bpnet lab``: registered by ``bpnet.lab.cli.register(subparsers)`` when present."""
    try:
        module = importlib.import_module("bpnet.lab.cli")
    except ModuleNotFoundError as exc:
        if not (exc.name or "").startswith("bpnet.lab"):
            raise
        module = None
    if module is not None and hasattr(module, "register"):
        module.register(sub)
        return
    p = sub.add_parser("lab", help="reproduce training failures on purpose (not installed)")
    p.add_argument("rest", nargs=argparse.REMAINDER)
    p.set_defaults(func=lambda args: (print("bpnet lab: not available in this installation",
                                            file=sys.stderr), 2)[1])


if __name__ == "__main__":      # pragma: no cover
    raise SystemExit(main())
