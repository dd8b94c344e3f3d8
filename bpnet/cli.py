"""The ``bpnet`` command line: ``bpnet train``, ``bpnet doctor RUN.json``, ``bpnet lab ...``.

Subcommands register themselves through :func:`register_subcommand`: a
function ``register(subparsers)`` that adds one parser and sets
``func=handler`` on it, where ``handler(args) -> int`` returns the exit code.
``bpnet lab`` is provided by ``bpnet.lab.cli.register`` when that module exists.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys

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
    if name not in loaders:
        raise ConfigError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return loaders[name]()


def _hidden(spec) -> list[int]:
    if isinstance(spec, (list, tuple)):
        units = [int(u) for u in spec]
    else:
        text = str(spec).strip()
        units = [int(u) for u in text.replace(" ", "").split(",") if u] if text not in ("", "none") else []
    if any(u <= 0 for u in units):
        raise ConfigError(f"--hidden {spec!r}: layer sizes must be positive integers, e.g. 64,64")
    return units


def _read_config(path) -> dict:
    """A JSON or TOML file of ``train`` options (keys as the flags, '-' or '_')."""
    with open(path, "rb") as fh:
        raw = fh.read()
    if str(path).endswith(".toml"):
        import tomllib
        cfg = tomllib.loads(raw.decode())
        cfg = cfg.get("train", cfg)
    else:
        cfg = json.loads(raw.decode())
    if not isinstance(cfg, dict):
        raise ConfigError(f"{path}: the config must be a table/object of options")
    return {str(k).replace("-", "_"): v for k, v in cfg.items()}


def _apply_config(parser, args, argv):
    """Re-parse ``argv`` with the config file's options as the subcommand's defaults."""
    sub = args._parser
    cfg = _read_config(args.config)
    known = {a.dest for a in sub._actions} - {"help", "config"}
    unknown = sorted(set(cfg) - known)
    if unknown:
        raise ConfigError(f"{args.config}: unknown option(s) {unknown}; known: {sorted(known)}")
    if isinstance(cfg.get("hidden"), (list, tuple)):
        cfg["hidden"] = ",".join(str(u) for u in cfg["hidden"])
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
    from . import Dense, Sequential
    from .callbacks import ModelCheckpoint
    from .data import Standardizer, train_test_split
    from .layers import ACTIVATION_LAYERS
    from .optim import OPTIMIZERS

    if args.activation not in ACTIVATION_LAYERS:
        raise ConfigError(f"--activation {args.activation!r}: choose one of {', '.join(sorted(ACTIVATION_LAYERS))}")
    if args.optimizer.lower() not in OPTIMIZERS:
        raise ConfigError(f"--optimizer {args.optimizer!r}: choose one of {', '.join(sorted(OPTIMIZERS))}")
    X, y = _load_dataset(args.dataset, args.seed)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=args.test_size, seed=args.seed,
                                                        stratify=True)
    scaler = Standardizer().fit(X_train)           # statistics of the training split only
    X_train, X_test = scaler.transform(X_train), scaler.transform(X_test)
    n_classes = int(y.max()) + 1

    layers = []
    for units in _hidden(args.hidden):
        layers += [Dense(units, init=args.init), ACTIVATION_LAYERS[args.activation]()]
    layers.append(Dense(n_classes))
    model = Sequential(layers, seed=args.seed, backend=args.backend)
    opt_cls = OPTIMIZERS[args.optimizer.lower()]
    optimizer = opt_cls(lr=args.lr) if args.lr is not None else opt_cls()
    model.compile(loss="cross_entropy", optimizer=optimizer)
    model.preprocessor = scaler

    callbacks = [] if args.quiet else [_EpochPrinter(args.epochs)]
    if args.checkpoint:
        callbacks.append(ModelCheckpoint(args.checkpoint, monitor="val_loss", save_best_only=True))
    fit_kwargs = {}
    accepted = inspect.signature(model.fit).parameters
    for flag, key in (("doctor", "doctor"), ("detect_anomaly", "detect_anomaly")):
        if getattr(args, flag):
            if key not in accepted:
                raise ConfigError(f"--{flag.replace('_', '-')} needs the bpnet doctor, which this "
                                  "installation does not have")
            fit_kwargs[key] = True
    history = model.fit(X_train, y_train, epochs=args.epochs, batch_size=args.batch_size,
                        validation_split=args.val_split if args.val_split > 0 else 0.0,
                        callbacks=callbacks, verbose=0, **fit_kwargs)
    result = model.evaluate(X_test, y_test)
    print(f"dataset {args.dataset}: {len(X_train)} train / {len(X_test)} test samples, "
          f"{X.shape[1]} features, {n_classes} classes")
    print(f"test loss {result['loss']:.4f}  test accuracy {result['accuracy']:.4f}")
    if args.checkpoint:
        print(f"best checkpoint (lowest val_loss): {args.checkpoint}")
    if args.history_out:
        history.to_json(args.history_out)
        print(f"history written to {args.history_out}")
    return 0


@register_subcommand
def _register_train(sub):
    p = sub.add_parser("train", help="train an MLP on a built-in data set",
                       description="Train a multilayer perceptron on a built-in data set. Features are "
                                   "standardised with statistics of the training split.")
    p.add_argument("--config", metavar="FILE", help="JSON or TOML file of options (flags given override it)")
    p.add_argument("--dataset", default="digits", choices=DATASETS)
    p.add_argument("--hidden", default="64,64", help="hidden layer sizes, comma separated (default 64,64)")
    p.add_argument("--activation", default="relu")
    p.add_argument("--init", default="he_normal", help="weight initialiser of the hidden layers")
    p.add_argument("--optimizer", default="adam")
    p.add_argument("--lr", type=float, default=None, help="learning rate (default: the optimizer's)")
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--test-size", type=float, default=0.2, help="fraction held out for the test score")
    p.add_argument("--val-split", type=float, default=0.1, help="fraction of training data for validation")
    p.add_argument("--backend", default=None, choices=("numpy", "numba", "cupy"),
                   help="array backend (default: $BPNET_BACKEND, else numba when installed)")
    p.add_argument("--doctor", action="store_true", help="monitor the run and print the diagnosis")
    p.add_argument("--detect-anomaly", action="store_true", help="stop at the first NaN/Inf, naming the layer")
    p.add_argument("--checkpoint", metavar="PATH", help="save the best model (lowest val_loss) here")
    p.add_argument("--history-out", metavar="PATH", help="write the training history as JSON")
    p.add_argument("--quiet", action="store_true", help="do not print a line per epoch")
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
    return 0


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
    p = sub.add_parser("doctor", help="diagnose a saved training run",
                       description="Load a History saved with history.to_json(path) and print the diagnosis.")
    p.add_argument("run", metavar="RUN.json", nargs="?")
    p.add_argument("--env", action="store_true",
                   help="print versions, BLAS, threads and backend choice (bpnet.show_versions)")
    p.set_defaults(func=_doctor)


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
