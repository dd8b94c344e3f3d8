"""Bayesian hyper-parameter search over learning rate, batch size and dropout.

Grid search spends most fits on bad settings; a Bayesian optimiser models the
score as a function of the hyper-parameters and proposes promising settings
next.  This script uses Optuna (TPE) when installed, else scikit-optimize's
``BayesSearchCV``, else it says how to install one and exits cleanly.

    pip install 'bpnet-framework[optuna]'          # or: pip install scikit-optimize
    python examples/06_bayesian_search.py
"""
import sys
import time

from sklearn.datasets import load_digits
from sklearn.model_selection import cross_val_score, train_test_split
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

from bpnet.sklearn import BPNetClassifier

N_TRIALS = 12


def make_pipeline(lr=1e-3, batch_size=32, dropout=0.0):
    return Pipeline([("scale", StandardScaler()),
                     ("net", BPNetClassifier(hidden_layer_sizes=(64,), epochs=12, lr=lr,
                                             batch_size=batch_size, dropout=dropout, seed=0))])


def _fmt(params: dict) -> str:
    return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in params.items())


def search_with_optuna(optuna, X, y):
    optuna.logging.set_verbosity(optuna.logging.WARNING)

    def objective(trial):
        pipe = make_pipeline(lr=trial.suggest_float("lr", 1e-4, 3e-2, log=True),
                             batch_size=trial.suggest_categorical("batch_size", [16, 32, 64, 128]),
                             dropout=trial.suggest_float("dropout", 0.0, 0.5))
        return cross_val_score(pipe, X, y, cv=3).mean()

    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    study.optimize(objective, n_trials=N_TRIALS)
    for t in study.trials:
        print(f"  trial {t.number:2d}  {_fmt(t.params)}  cv accuracy {t.value:.4f}")
    return study.best_params, study.best_value


def search_with_skopt(skopt, X, y):
    from skopt import BayesSearchCV
    from skopt.space import Categorical, Real
    space = {"net__lr": Real(1e-4, 3e-2, prior="log-uniform"),
             "net__batch_size": Categorical([16, 32, 64, 128]),
             "net__dropout": Real(0.0, 0.5)}
    search = BayesSearchCV(make_pipeline(), space, n_iter=N_TRIALS, cv=3, random_state=0).fit(X, y)
    best = {k.removeprefix("net__"): v for k, v in search.best_params_.items()}
    return best, search.best_score_


def main() -> int:
    try:
        import optuna
        backend, run = "Optuna (TPE sampler)", lambda X, y: search_with_optuna(optuna, X, y)
    except ImportError:
        try:
            import skopt
            backend, run = "scikit-optimize (BayesSearchCV)", lambda X, y: search_with_skopt(skopt, X, y)
        except ImportError:
            print("This example needs Optuna or scikit-optimize, and neither is installed.\n"
                  "Install one of them and run it again:\n"
                  "    pip install 'bpnet-framework[optuna]'      (or: pip install optuna)\n"
                  "    pip install scikit-optimize\n"
                  "For a search without extra packages see examples/05_sklearn_grid_search.py.")
            return 0

    X, y = load_digits(return_X_y=True)
    X_train, X_test, y_train, y_test = train_test_split(X, y, test_size=0.25, random_state=0, stratify=y)
    print(f"searching lr, batch_size, dropout with {backend}, {N_TRIALS} trials x 3-fold CV")
    start = time.perf_counter()
    best, score = run(X_train, y_train)
    print(f"\nbest parameters: {_fmt(best)}  (cv accuracy {score:.4f}, {time.perf_counter() - start:.1f} s)")
    final = make_pipeline(**{k: best[k] for k in ("lr", "batch_size", "dropout")}).fit(X_train, y_train)
    print(f"test accuracy with the best parameters: {final.score(X_test, y_test):.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
