"""scikit-learn estimators: a bpnet multilayer perceptron as ``BPNetClassifier`` / ``BPNetRegressor``.

    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from bpnet.sklearn import BPNetClassifier

    clf = Pipeline([("scale", StandardScaler()), ("net", BPNetClassifier(hidden_layer_sizes=(64,)))])
    clf.fit(X_train, y_train).score(X_test, y_test)

The estimators follow scikit-learn's conventions, so ``clone``, ``Pipeline``,
``GridSearchCV``, ``RandomizedSearchCV`` and ``cross_val_score`` work as with
any built-in model:

* the constructor only stores its arguments; they are checked in ``fit``;
* ``fit`` validates the data with scikit-learn's ``validate_data`` (NaN, Inf,
  sparse, complex, empty or 1-D inputs raise ``ValueError``/``TypeError``),
  builds a fresh :class:`~bpnet.Sequential` -- per hidden layer
  ``Dense(units, init) -> activation (-> Dropout)``, then an output ``Dense`` --
  and trains it; the same ``seed`` gives the same model;
* fitted state ends in ``_``: ``model_`` (the trained ``Sequential``),
  ``history_`` (per-epoch metrics), ``n_iter_`` (epochs run), ``loss_``,
  ``n_features_in_``, ``classes_`` (classifier), ``n_outputs_`` (regressor).

Pickling (which joblib uses for ``n_jobs``) stores the trained network as
arrays plus its JSON architecture, like :meth:`bpnet.Sequential.save`, never
as pickled layer objects.

``BPNetClassifier`` minimises softmax cross-entropy over ``len(classes_)``
outputs (two outputs for a binary problem, so ``predict_proba`` is a softmax
in every case); ``BPNetRegressor`` minimises the mean squared error and
accepts a 1-D or 2-D ``y``.  Neither scales its inputs or targets: put a
``StandardScaler`` in front (and, for large regression targets, wrap the
regressor in ``TransformedTargetRegressor``).
"""
from __future__ import annotations

import numbers

import numpy as np

from .errors import MissingDependencyError

try:
    from sklearn.base import BaseEstimator, ClassifierMixin, RegressorMixin
    from sklearn.model_selection import train_test_split as _sk_split
    from sklearn.utils.class_weight import compute_class_weight
    from sklearn.utils.multiclass import check_classification_targets
    from sklearn.utils.validation import check_is_fitted
except ImportError as exc:      # pragma: no cover - exercised only without scikit-learn
    raise MissingDependencyError(
        "bpnet.sklearn needs scikit-learn: pip install 'bpnet-framework[sklearn]' (or pip install scikit-learn)"
    ) from exc

try:                                       # scikit-learn >= 1.6
    from sklearn.utils.validation import validate_data
except ImportError:                        # pragma: no cover - older scikit-learn
    def validate_data(estimator, X="no_validation", y="no_validation", reset=True, **kw):
        return estimator._validate_data(X, y, reset=reset, **kw)

from .backends import get_backend
from .callbacks import EarlyStopping
from .io import model_state, restore_state
from .layers import ACTIVATION_LAYERS, Dense, Dropout
from .losses import MSE, CrossEntropy
from .model import Sequential
from .optim import OPTIMIZERS, Optimizer, optimizer_from_config

__all__ = ["BPNetClassifier", "BPNetRegressor"]


class _BPNetBase(BaseEstimator):
    """Shared hyper-parameters, network construction, training and pickling."""

    def __init__(self, hidden_layer_sizes=(64,), activation="relu", init="he_normal", optimizer="adam",
                 lr=1e-3, batch_size=32, epochs=50, dropout=0.0, weight_decay=0.0, early_stopping=False,
                 validation_fraction=0.1, patience=5, seed=0, backend=None, verbose=0):
        self.hidden_layer_sizes = hidden_layer_sizes
        self.activation = activation
        self.init = init
        self.optimizer = optimizer
        self.lr = lr
        self.batch_size = batch_size
        self.epochs = epochs
        self.dropout = dropout
        self.weight_decay = weight_decay
        self.early_stopping = early_stopping
        self.validation_fraction = validation_fraction
        self.patience = patience
        self.seed = seed
        self.backend = backend
        self.verbose = verbose

    # -- hyper-parameter checks (in fit, as scikit-learn asks) ---------------------------------
    def _hidden_sizes(self) -> tuple:
        sizes = self.hidden_layer_sizes
        if isinstance(sizes, numbers.Integral):
            sizes = (sizes,)
        try:
            sizes = tuple(sizes)
        except TypeError:
            raise ValueError(f"hidden_layer_sizes={self.hidden_layer_sizes!r}: pass a tuple of "
                             "positive integers, e.g. (64,) or (128, 64)") from None
        if not all(isinstance(s, numbers.Integral) and s > 0 for s in sizes):
            raise ValueError(f"hidden_layer_sizes={self.hidden_layer_sizes!r}: every size must be a "
                             "positive integer")
        return tuple(int(s) for s in sizes)

    def _check_params(self):
        if self.activation not in ACTIVATION_LAYERS:
            raise ValueError(f"activation={self.activation!r}: choose one of {sorted(ACTIVATION_LAYERS)}")
        for name, lo_open in (("lr", True), ("weight_decay", False)):
            v = getattr(self, name)
            if not isinstance(v, numbers.Real) or v < 0 or (lo_open and v == 0):
                raise ValueError(f"{name}={v!r} must be a {'positive' if lo_open else 'non-negative'} number")
        for name in ("batch_size", "epochs", "patience"):
            v = getattr(self, name)
            if not isinstance(v, numbers.Integral) or v < 1:
                raise ValueError(f"{name}={v!r} must be a positive integer")
        if not isinstance(self.dropout, numbers.Real) or not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout={self.dropout!r} is a drop probability and must be in [0, 1)")
        if not 0.0 < self.validation_fraction < 1.0:
            raise ValueError(f"validation_fraction={self.validation_fraction!r} must be in (0, 1)")

    def _make_optimizer(self) -> Optimizer:
        opt = self.optimizer
        if isinstance(opt, Optimizer):      # never train the caller's instance: copy its settings
            config = {**opt.get_config(), "lr": float(self.lr), "weight_decay": float(self.weight_decay)}
            return optimizer_from_config(type(opt).__name__, config)
        if not isinstance(opt, str) or opt.lower() not in OPTIMIZERS:
            raise ValueError(f"optimizer={opt!r}: choose one of {sorted(OPTIMIZERS)} or pass a bpnet Optimizer")
        return OPTIMIZERS[opt.lower()](lr=float(self.lr), weight_decay=float(self.weight_decay))

    def _build_network(self, n_outputs: int) -> Sequential:
        layers = []
        for units in self._hidden_sizes():
            layers += [Dense(units, init=self.init), ACTIVATION_LAYERS[self.activation]()]
            if self.dropout > 0:
                layers.append(Dropout(float(self.dropout)))
        layers.append(Dense(n_outputs))         # linear output: Glorot (xavier_uniform) scale
        return Sequential(layers, seed=int(self.seed), backend=self.backend)

    # -- training ----------------------------------------------------------------------------
    def _train(self, X, y, loss, n_outputs: int, stratify=None):
        self._check_params()
        model = self._build_network(n_outputs)
        model.compile(loss=loss, optimizer=self._make_optimizer(), metrics=[])
        callbacks, validation_data = [], None
        if self.early_stopping and len(X) >= 2:
            if stratify is not None and np.bincount(stratify).min() < 2:
                stratify = None                 # a class with one sample cannot be split
            try:
                X, Xv, y, yv = _sk_split(X, y, test_size=self.validation_fraction,
                                         random_state=int(self.seed), stratify=stratify)
            except ValueError:                  # validation set smaller than the number of classes
                X, Xv, y, yv = _sk_split(X, y, test_size=self.validation_fraction, random_state=int(self.seed))
            validation_data = (Xv, yv)
            callbacks.append(EarlyStopping(monitor="val_loss", patience=int(self.patience),
                                           restore_best_weights=True))
        history = model.fit(X, y, epochs=int(self.epochs), batch_size=min(int(self.batch_size), len(X)),
                            validation_data=validation_data, callbacks=callbacks,
                            verbose=1 if self.verbose else 0)
        model.clear_cache()
        self.model_ = model
        self.history_ = {k: list(v) for k, v in history.history.items()}
        self.n_iter_ = len(history)
        self.loss_ = self.history_["loss"][-1]
        return self

    def _logits(self, X) -> np.ndarray:
        check_is_fitted(self, "model_")
        X = validate_data(self, X, reset=False)
        return self.model_.predict(X).astype(np.float64)

    # -- pickling: arrays + JSON architecture, as bpnet saves models -----------------------
    def __getstate__(self):
        state = dict(super().__getstate__())        # a copy: never strip the live estimator
        model = state.pop("model_", None)
        if model is not None:
            state["_model_state"] = model_state(model)
        return state

    def __setstate__(self, state):
        state = dict(state)
        saved = state.pop("_model_state", None)
        super().__setstate__(state)
        if saved is not None:
            config, arrays = saved
            model = Sequential.from_config(config["model"])
            model.backend = get_backend(self.backend)
            restore_state(model, config, arrays)
            self.model_ = model


class BPNetClassifier(ClassifierMixin, _BPNetBase):
    """A bpnet multilayer perceptron trained with softmax cross-entropy.

    Parameters
    ----------
    hidden_layer_sizes : units of each hidden layer, e.g. ``(128, 64)``; ``()`` gives
        multinomial logistic regression.
    activation : "relu", "tanh", "sigmoid", "leaky_relu", "elu" or "identity".
    init : initialiser of the hidden layers' weights ("he_normal", "xavier_uniform", ...).
    optimizer : "adam", "adamw", "sgd", "rmsprop" or a bpnet ``Optimizer`` (copied, with
        ``lr`` and ``weight_decay`` taken from this estimator).
    lr, weight_decay : learning rate and L2 penalty (decoupled for "adamw").
    batch_size, epochs : mini-batch size and number of passes over the training data.
    dropout : drop probability after each hidden activation (0 disables Dropout layers).
    early_stopping : hold out ``validation_fraction`` of the training data (stratified)
        and stop when its loss has not improved for ``patience`` epochs, keeping the
        best weights.
    seed : seeds the initial weights, the shuffling, dropout and the validation split.
    backend : "numpy", "numba", "cupy" or None (bpnet's default).
    verbose : 0 silent, 1 a progress bar per epoch.
    class_weight : None, "balanced" (weights ``n_samples / (n_classes * count)``) or a
        ``{class: weight}`` dict, passed to ``CrossEntropy(class_weights=...)``.
    """

    def __init__(self, hidden_layer_sizes=(64,), activation="relu", init="he_normal", optimizer="adam",
                 lr=1e-3, batch_size=32, epochs=50, dropout=0.0, weight_decay=0.0, early_stopping=False,
                 validation_fraction=0.1, patience=5, seed=0, backend=None, verbose=0, class_weight=None):
        super().__init__(hidden_layer_sizes=hidden_layer_sizes, activation=activation, init=init,
                         optimizer=optimizer, lr=lr, batch_size=batch_size, epochs=epochs, dropout=dropout,
                         weight_decay=weight_decay, early_stopping=early_stopping,
                         validation_fraction=validation_fraction, patience=patience, seed=seed,
                         backend=backend, verbose=verbose)
        self.class_weight = class_weight

    def fit(self, X, y):
        """Train on ``X`` (n_samples, n_features) and labels ``y`` of any type ``np.unique`` sorts."""
        X, y = validate_data(self, X, y)
        check_classification_targets(y)
        self.classes_, y_enc = np.unique(y, return_inverse=True)
        if len(self.classes_) < 2:
            raise ValueError(f"{type(self).__name__} needs samples of at least 2 classes, but the data "
                             f"contains only one class: {self.classes_[0]!r}")
        weights = None
        if self.class_weight is not None:
            weights = compute_class_weight(self.class_weight, classes=self.classes_, y=y)
        y_enc = y_enc.astype(np.int64).ravel()
        return self._train(X, y_enc, CrossEntropy(class_weights=weights), len(self.classes_), stratify=y_enc)

    def predict_proba(self, X) -> np.ndarray:
        """Class probabilities, softmax of the logits; columns follow ``classes_``."""
        z = self._logits(X)
        z -= z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        return p

    def predict_log_proba(self, X) -> np.ndarray:
        z = self._logits(X)
        z -= z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    def predict(self, X) -> np.ndarray:
        """The most probable class of each sample (labels from ``classes_``)."""
        best = self.predict_proba(X).argmax(axis=1)     # raises NotFittedError before fit
        return self.classes_[best]


class BPNetRegressor(RegressorMixin, _BPNetBase):
    """A bpnet multilayer perceptron trained with the mean squared error.

    Same hyper-parameters as :class:`BPNetClassifier` (without ``class_weight``).
    ``y`` may be 1-D (one output; ``predict`` returns shape (n,)) or 2-D
    (n_outputs columns; ``predict`` returns (n, n_outputs)).
    """

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.multi_output = True
        return tags

    def _more_tags(self):           # scikit-learn < 1.6
        return {"multioutput": True}

    def fit(self, X, y):
        """Train on ``X`` (n_samples, n_features) and real targets ``y`` (n,) or (n, k)."""
        X, y = validate_data(self, X, y, multi_output=True, y_numeric=True)
        y = np.asarray(y, dtype=np.float64)
        self._y_1d = y.ndim == 1
        self.n_outputs_ = 1 if self._y_1d else y.shape[1]
        return self._train(X, y.reshape(len(y), self.n_outputs_), MSE(), self.n_outputs_)

    def predict(self, X) -> np.ndarray:
        out = self._logits(X)
        return out.ravel() if self._y_1d else out
