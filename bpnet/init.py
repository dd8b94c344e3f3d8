"""Weight initialisers, with PyTorch's names and formulas.

Every initialiser has the signature ``fn(shape, rng, dtype=np.float32, **kw)``
and returns a new NumPy array.  ``rng`` is a ``numpy.random.Generator``; values
are drawn in float64 and then cast, so the same seed gives the same numbers in
every dtype (up to rounding).

Layout: bpnet's ``Dense`` weight ``W`` has shape ``(in_features,
out_features)``, the transpose of PyTorch's ``(out, in)``.  Hence
``fan_in = shape[0]`` and ``fan_out = shape[1]``.

Why the scales: a unit of ``y = x @ W`` sums ``fan_in`` terms, so with zero-mean
weights ``Var(y) = fan_in * Var(W) * E[x^2]``.  Choosing ``Var(W) = 1/fan_in``
keeps the forward signal's variance constant through linear/tanh layers
(LeCun); ReLU zeroes half of its inputs, halving ``E[x^2]``, so it needs
``Var(W) = 2/fan_in`` (He et al., 2015).  The backward pass sums over
``fan_out`` instead; Glorot & Bengio (2010) compromise with
``Var(W) = 2/(fan_in + fan_out)``.  Too small a scale makes signals and
gradients vanish with depth, too large makes them explode.
"""

from __future__ import annotations

import inspect
import math
from functools import partial

import numpy as np

from .errors import ConfigError

__all__ = [
    "compute_fans", "calculate_gain", "get_initializer", "INITIALIZERS",
    "zeros", "ones", "constant", "normal", "uniform",
    "xavier_uniform", "xavier_normal", "kaiming_uniform", "kaiming_normal",
    "orthogonal", "he_normal", "he_uniform", "glorot_normal", "glorot_uniform",
    "lecun_normal",
]

_LINEAR = ("linear", "identity", "conv1d", "conv2d", "conv3d",
           "conv_transpose1d", "conv_transpose2d", "conv_transpose3d", "sigmoid")
_GAINS = _LINEAR + ("tanh", "relu", "leaky_relu", "selu")
_MODES = ("fan_in", "fan_out")


def _shape(shape) -> tuple[int, ...]:
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
    if any(int(d) != d or d < 0 for d in shape):
        raise ConfigError(f"shape must be non-negative integers, got {shape}")
    return tuple(int(d) for d in shape)


def _draw(rng, shape, dtype, sample):
    """Call ``sample(rng, shape)`` (float64) and cast the result to ``dtype``."""
    if not isinstance(rng, np.random.Generator):
        raise ConfigError(f"rng must be a numpy.random.Generator, got {type(rng).__name__}; "
                          "create one with np.random.default_rng(seed)")
    shape = _shape(shape)
    if math.prod(shape) == 0:
        return np.empty(shape, dtype=dtype)
    return np.asarray(sample(rng, shape), dtype=np.float64).astype(dtype)


def compute_fans(shape) -> tuple[int, int]:
    """Return ``(fan_in, fan_out)`` for bpnet's ``(in, out, *receptive)`` layout.

    2-D ``(in, out)``: ``(shape[0], shape[1])``.  1-D (a bias): both are
    ``shape[0]``.  More dimensions: both are multiplied by ``prod(shape[2:])``.
    """
    shape = _shape(shape)
    if len(shape) == 0:
        raise ConfigError("cannot compute fans of a scalar (0-d) shape")
    if len(shape) == 1:
        return shape[0], shape[0]
    receptive = math.prod(shape[2:])
    return shape[0] * receptive, shape[1] * receptive


def calculate_gain(nonlinearity: str, param=None) -> float:
    """Recommended gain for ``nonlinearity`` (PyTorch's table).

    linear, identity, conv*, sigmoid: 1; tanh: 5/3; relu: sqrt(2);
    leaky_relu: sqrt(2 / (1 + slope^2)) with slope ``param`` (default 0.01);
    selu: 3/4.  The gain restores the factor by which the nonlinearity
    shrinks the signal's second moment (ReLU halves it, hence sqrt(2)).
    """
    name = str(nonlinearity).lower()
    if name in _LINEAR:
        return 1.0
    if name == "tanh":
        return 5.0 / 3.0
    if name == "relu":
        return math.sqrt(2.0)
    if name == "leaky_relu":
        if param is None:
            slope = 0.01
        elif isinstance(param, (int, float, np.integer, np.floating)) and not isinstance(param, bool):
            slope = float(param)
        else:
            raise ConfigError(f"leaky_relu negative slope must be a number, got {param!r}")
        return math.sqrt(2.0 / (1.0 + slope ** 2))
    if name == "selu":
        return 0.75
    raise ConfigError(f"unsupported nonlinearity {nonlinearity!r}; "
                      f"valid choices: {', '.join(_GAINS)}")


def _fan(shape, mode: str) -> int:
    if mode not in _MODES:
        raise ConfigError(f"mode must be one of {', '.join(_MODES)}, got {mode!r}")
    fan_in, fan_out = compute_fans(shape)
    return fan_in if mode == "fan_in" else fan_out


# --- constant and plain random --------------------------------------------

def zeros(shape, rng=None, dtype=np.float32) -> np.ndarray:
    """All zeros: the usual bias initialisation (``rng`` is ignored)."""
    return np.zeros(_shape(shape), dtype=dtype)


def ones(shape, rng=None, dtype=np.float32) -> np.ndarray:
    """All ones: e.g. a normalisation layer's scale (``rng`` is ignored)."""
    return np.ones(_shape(shape), dtype=dtype)


def constant(shape, rng=None, dtype=np.float32, value=0.0) -> np.ndarray:
    """Every entry equal to ``value`` (``rng`` is ignored).

    Constant weights never break symmetry: all units of a layer get the same
    gradient and stay identical, so use this for biases, not weights.
    """
    return np.full(_shape(shape), value, dtype=np.float64).astype(dtype)


def normal(shape, rng, dtype=np.float32, mean=0.0, std=1.0) -> np.ndarray:
    """Draws from N(mean, std^2)."""
    if std < 0:
        raise ConfigError(f"std must be >= 0, got {std}")
    return _draw(rng, shape, dtype, lambda r, s: r.normal(mean, std, s))


def uniform(shape, rng, dtype=np.float32, a=0.0, b=1.0) -> np.ndarray:
    """Draws from U(a, b); its variance is (b - a)^2 / 12."""
    if a > b:
        raise ConfigError(f"uniform needs a <= b, got a={a}, b={b}")
    return _draw(rng, shape, dtype, lambda r, s: r.uniform(a, b, s))


# --- variance-preserving ---------------------------------------------------

def xavier_uniform(shape, rng, dtype=np.float32, gain=1.0) -> np.ndarray:
    """U(-bound, bound) with bound = gain * sqrt(6 / (fan_in + fan_out)).

    Var(W) = bound^2/3 = gain^2 * 2/(fan_in + fan_out) (Glorot & Bengio):
    balances forward variance (needs 1/fan_in) and backward (1/fan_out).
    """
    fan_in, fan_out = compute_fans(shape)
    bound = gain * math.sqrt(6.0 / (fan_in + fan_out)) if fan_in + fan_out else 0.0
    return _draw(rng, shape, dtype, lambda r, s: r.uniform(-bound, bound, s))


def xavier_normal(shape, rng, dtype=np.float32, gain=1.0) -> np.ndarray:
    """N(0, std^2) with std = gain * sqrt(2 / (fan_in + fan_out)) (Glorot)."""
    fan_in, fan_out = compute_fans(shape)
    std = gain * math.sqrt(2.0 / (fan_in + fan_out)) if fan_in + fan_out else 0.0
    return _draw(rng, shape, dtype, lambda r, s: r.normal(0.0, std, s))


def kaiming_uniform(shape, rng, dtype=np.float32, a=0.0, mode="fan_in",
                    nonlinearity="leaky_relu") -> np.ndarray:
    """U(-bound, bound) with bound = gain * sqrt(3 / fan) (He et al.).

    gain = calculate_gain(nonlinearity, a).  Var(W) = gain^2 / fan, which for
    ReLU is 2/fan_in: the forward signal's variance stays constant with depth
    (mode="fan_in"), or the backward gradient's does (mode="fan_out").
    """
    fan = _fan(shape, mode)
    bound = calculate_gain(nonlinearity, a) * math.sqrt(3.0 / fan) if fan else 0.0
    return _draw(rng, shape, dtype, lambda r, s: r.uniform(-bound, bound, s))


def kaiming_normal(shape, rng, dtype=np.float32, a=0.0, mode="fan_in",
                   nonlinearity="leaky_relu") -> np.ndarray:
    """N(0, std^2) with std = gain / sqrt(fan) (He et al.); see kaiming_uniform."""
    fan = _fan(shape, mode)
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan) if fan else 0.0
    return _draw(rng, shape, dtype, lambda r, s: r.normal(0.0, std, s))


def orthogonal(shape, rng, dtype=np.float32, gain=1.0) -> np.ndarray:
    """A (semi-)orthogonal matrix times ``gain`` (Saxe et al., 2013).

    Q from the QR decomposition of a Gaussian (max, min) matrix, its columns'
    signs fixed by sign(diag(R)) so Q is uniformly (Haar) distributed;
    transposed when rows < cols.  The result has orthonormal columns (tall)
    or rows (wide): it preserves the norm of every signal, so neither the
    forward activations nor the backward gradients grow or shrink.  Shapes
    with more than 2 dims are flattened to (shape[0], prod(shape[1:])).
    """
    shape = _shape(shape)
    if len(shape) < 2:
        raise ConfigError(f"orthogonal needs at least 2 dimensions, got shape {shape}")

    def sample(r, s):
        rows, cols = s[0], math.prod(s[1:])
        q, rr = np.linalg.qr(r.standard_normal((max(rows, cols), min(rows, cols))))
        q = q * np.where(np.diag(rr) < 0, -1.0, 1.0)
        return (gain * (q.T if rows < cols else q)).reshape(s)

    return _draw(rng, shape, dtype, sample)


# --- Keras names -------------------------------------------------------------

def he_normal(shape, rng, dtype=np.float32, mode="fan_in") -> np.ndarray:
    """kaiming_normal for ReLU: std = sqrt(2 / fan_in) (Keras truncates; bpnet does not)."""
    return kaiming_normal(shape, rng, dtype, mode=mode, nonlinearity="relu")


def he_uniform(shape, rng, dtype=np.float32, mode="fan_in") -> np.ndarray:
    """kaiming_uniform for ReLU: bound = sqrt(6 / fan_in)."""
    return kaiming_uniform(shape, rng, dtype, mode=mode, nonlinearity="relu")


def lecun_normal(shape, rng, dtype=np.float32) -> np.ndarray:
    """N(0, 1/fan_in): keeps variance for linear, tanh-like and SELU units (LeCun 1998)."""
    return kaiming_normal(shape, rng, dtype, mode="fan_in", nonlinearity="linear")


glorot_normal = xavier_normal
glorot_uniform = xavier_uniform

INITIALIZERS = {
    "zeros": zeros, "ones": ones, "constant": constant,
    "normal": normal, "uniform": uniform,
    "xavier_uniform": xavier_uniform, "xavier_normal": xavier_normal,
    "kaiming_uniform": kaiming_uniform, "kaiming_normal": kaiming_normal,
    "orthogonal": orthogonal,
    "he_normal": he_normal, "he_uniform": he_uniform, "lecun_normal": lecun_normal,
    "glorot_normal": glorot_normal, "glorot_uniform": glorot_uniform,
    "xavier": xavier_uniform, "he": he_normal, "kaiming": he_normal,
}


def get_initializer(spec, **kwargs):
    """Resolve ``spec`` (a name from INITIALIZERS, any case, or a callable with
    the initialiser signature) to ``f(shape, rng, dtype)`` with ``kwargs`` bound.

    Unknown names and keyword arguments the initialiser does not take raise
    ConfigError here, not later when the layer is built.
    """
    if isinstance(spec, str):
        fn = INITIALIZERS.get(spec.lower())
        if fn is None:
            raise ConfigError(f"unknown initializer {spec!r}; valid names: "
                              f"{', '.join(sorted(INITIALIZERS))}")
    elif callable(spec):
        fn = spec
    else:
        raise ConfigError(f"initializer must be a name or a callable, got {type(spec).__name__}; "
                          f"valid names: {', '.join(sorted(INITIALIZERS))}")
    try:
        inspect.signature(fn).bind_partial(None, None, **kwargs)
    except TypeError as e:
        raise ConfigError(f"bad arguments {kwargs} for initializer "
                          f"{getattr(fn, '__name__', fn)!r}: {e}") from None
    except ValueError:  # no signature available (some builtins): bind lazily
        pass
    return partial(fn, **kwargs)
