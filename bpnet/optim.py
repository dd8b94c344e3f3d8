"""Optimizers over the model's flat parameter buffer.

A bound optimizer sees two 1-D arrays, every parameter and every gradient of
the model laid end to end, so one backend call performs the whole update (the
"fused optimizer" trick).  ``lr`` may be reassigned at any time: schedules and
callbacks do exactly that.
"""
from __future__ import annotations

import numpy as np

from .errors import ConfigError, NotBuiltError
from .validation import non_negative, positive, real, unknown_name


class Optimizer:
    """Base class: holds ``lr``, the step count ``t`` and per-parameter state arrays."""
    state_names: tuple = ()

    def __init__(self, lr: float, weight_decay: float = 0.0):
        name = type(self).__name__
        self.lr = positive(lr, f"{name}(lr=...)")
        self.weight_decay = non_negative(weight_decay, f"{name}(weight_decay=...)")
        self.t = 0
        self.state: dict = {}
        self.model = None

    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value):
        # A Python float: NumPy treats it as "weak", so a float32 update stays in
        # float32.  A NumPy float64 scalar (np.exp(...) * lr) would make the NumPy
        # reference compute the update in float64, unlike the kernels.
        # 0 is allowed (a cosine schedule ends there); NaN, inf and negative values poison every weight.
        self._lr = non_negative(value, f"{type(self).__name__}.lr")

    def bind(self, model):
        """Attach to a built model (``compile`` does this); returns self."""
        self.model = model
        return self

    def _flat(self):
        if self.model is None:
            raise NotBuiltError(f"{type(self).__name__} is not attached to a model: call "
                                "model.compile(loss, optimizer) or optimizer.bind(model)")
        p, g = self.model.flat_params, self.model.flat_grads
        if p is None:
            raise NotBuiltError("the model has no parameters yet: call model.build(input_shape) "
                                "or run one forward pass first")
        scaler = getattr(self.model, "loss_scaler", None)
        if scaler is not None:              # mixed precision: update the float32 master copy
            p, g = scaler.master_params, scaler.master_grads
        for name in self.state_names:
            s = self.state.get(name)
            if s is None or s.shape != p.shape:
                self._check_state_dtype(p.dtype)
                self.state[name] = self.model.backend.zeros(p.shape, p.dtype)
            elif s.dtype != p.dtype or type(s) is not type(p):    # e.g. loaded on the host before build
                self.state[name] = self.model.backend.asarray(s, dtype=p.dtype)
        return p, g

    def check_dtype(self):
        """Before the first step (``fit`` calls it): refuse state in a dtype where ``eps`` is 0."""
        model = self.model
        if model is not None:
            scaler = getattr(model, "loss_scaler", None)
            self._check_state_dtype(scaler.master_dtype if scaler is not None else np.dtype(model.dtype))

    def _check_state_dtype(self, dtype):
        """Refuse state in a dtype where ``eps`` is 0 (Adam's 1e-8 in float16: every step divides by ~0)."""
        eps = getattr(self, "eps", None)
        if eps is not None and dtype.kind == "f" and dtype.type(eps) == 0:
            raise ConfigError(
                f"{type(self).__name__}(eps={eps}) on a {dtype.name} model: eps rounds to 0 in {dtype.name} "
                "and the squared-gradient average underflows, so the first update is NaN. Compile with "
                "loss_scaler=bpnet.LossScaler() (float32 master weights and optimizer state), or train "
                "in float32")

    def step(self):
        """Apply one update from the gradients currently in the model.

        Under mixed precision (``model.loss_scaler``) the update goes to the float32
        master weights, from the unscaled float32 gradients, and is then rounded
        into the float16 model.
        """
        p, g = self._flat()
        self.t += 1
        self._update(p, g)
        scaler = getattr(self.model, "loss_scaler", None)
        if scaler is not None:
            scaler.copy_to_model()

    def _update(self, p, g):
        raise NotImplementedError

    def zero_grad(self):
        if self.model is not None and self.model.flat_grads is not None:
            self.model.flat_grads[...] = 0

    # -- saving -----------------------------------------------------------------
    def get_config(self) -> dict:
        return {"lr": self.lr, "weight_decay": self.weight_decay}

    def state_dict(self) -> dict:
        """Arrays (host NumPy) and the step count, for checkpoints."""
        bk = self.model.backend if self.model is not None else None
        out = {"t": np.asarray(self.t), "lr": np.asarray(self.lr)}
        if getattr(self, "initial_lr", None) is not None:     # a schedule's base lr
            out["initial_lr"] = np.asarray(self.initial_lr)
        for k, v in self.state.items():
            out[k] = np.array(bk.to_numpy(v) if bk is not None else v)   # a copy: a snapshot, not a view
        return out

    def load_state_dict(self, state: dict):
        self.t = int(state["t"])
        self.lr = float(state["lr"])
        if "initial_lr" in state:
            self.initial_lr = float(state["initial_lr"])
        scaler = getattr(self.model, "loss_scaler", None)
        flat = getattr(self.model, "flat_params", None)
        for k in self.state_names:
            if k in state:
                # copy: two optimizers loaded from one state dict must not share their moments.
                # State lives in the dtype (and on the device) of the weights it updates: float32
                # masters under mixed precision; before the model is built it waits on the host
                # and the first step moves it (see _flat).
                if flat is None:
                    self.state[k] = np.array(state[k])
                else:
                    dtype = scaler.master_dtype if scaler is not None else flat.dtype
                    self.state[k] = self.model.backend.asarray(np.array(state[k], dtype=dtype))

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.get_config().items())})"


class SGD(Optimizer):
    r"""Stochastic gradient descent with optional (Nesterov) momentum, as in PyTorch.

    d = g + λ p;  v ← μ v + d;  p ← p - lr · (d + μ v if nesterov else v)
    (plain SGD when μ = 0: p ← p - lr · d).
    """

    def __init__(self, lr: float = 0.01, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        if not 0.0 <= real(momentum, "SGD(momentum=...)") < 1.0:
            raise ConfigError(f"SGD(momentum={momentum}) must be in [0, 1)")
        if nesterov and momentum == 0:
            raise ConfigError("SGD(nesterov=True) needs momentum > 0")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self.state_names = ("velocity",) if momentum else ()

    def _update(self, p, g):
        self.model.backend.sgd_step(p, g, self.state.get("velocity"), self.lr, self.momentum,
                                    self.nesterov, self.weight_decay)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    r"""Adam (Kingma & Ba).  m ← β1 m + (1-β1) g, v ← β2 v + (1-β2) g²,
    p ← p - lr · m̂ / (√v̂ + ε) with m̂ = m/(1-β1ᵗ), v̂ = v/(1-β2ᵗ).

    ``weight_decay`` adds λp to g (L2 regularisation, PyTorch's Adam).
    """
    state_names = ("m", "v")
    decoupled = False

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        name = type(self).__name__
        if isinstance(betas, (str, bytes)) or not hasattr(betas, "__len__") or len(betas) != 2:
            raise ConfigError(f"{name}(betas={betas!r}) must be a pair (beta1, beta2)")
        b1, b2 = (real(b, f"{name}(betas=...)") for b in betas)
        if not (0 <= b1 < 1 and 0 <= b2 < 1):
            raise ConfigError(f"{name}: need 0 <= betas < 1, got {betas}")
        self.betas, self.eps = (b1, b2), positive(eps, f"{name}(eps=...)")

    def _update(self, p, g):
        self.model.backend.adam_step(p, g, self.state["m"], self.state["v"], self.lr, *self.betas,
                                     self.eps, self.weight_decay, self.t, self.decoupled)

    def get_config(self):
        return {**super().get_config(), "betas": list(self.betas), "eps": self.eps}


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter): p ← p(1 - lr λ) before the Adam step."""
    decoupled = True

    def __init__(self, lr: float = 1e-3, betas=(0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.01):
        super().__init__(lr, betas, eps, weight_decay)


class RMSProp(Optimizer):
    r"""RMSProp as in PyTorch: s ← α s + (1-α) g², p ← p - lr · g / (√s + ε)
    (with momentum μ: b ← μ b + g/(√s+ε), p ← p - lr · b)."""

    def __init__(self, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8,
                 momentum: float = 0.0, weight_decay: float = 0.0):
        super().__init__(lr, weight_decay)
        alpha, momentum = real(alpha, "RMSProp(alpha=...)"), real(momentum, "RMSProp(momentum=...)")
        eps = positive(eps, "RMSProp(eps=...)")
        if not (0.0 <= alpha < 1.0 and 0.0 <= momentum < 1.0):
            raise ConfigError(f"RMSProp(alpha={alpha}, eps={eps}, momentum={momentum}): need "
                              "0 <= alpha < 1, 0 <= momentum < 1 and eps > 0")
        self.alpha, self.eps, self.momentum = float(alpha), float(eps), float(momentum)
        self.state_names = ("square_avg", "velocity") if momentum else ("square_avg",)

    def _update(self, p, g):
        self.model.backend.rmsprop_step(p, g, self.state["square_avg"], self.state.get("velocity"),
                                        self.lr, self.alpha, self.eps, self.momentum, self.weight_decay)

    def get_config(self):
        return {**super().get_config(), "alpha": self.alpha, "eps": self.eps, "momentum": self.momentum}


OPTIMIZERS = {"sgd": SGD, "adam": Adam, "adamw": AdamW, "rmsprop": RMSProp}


def get_optimizer(spec) -> Optimizer:
    if isinstance(spec, Optimizer):
        return spec
    if isinstance(spec, str) and spec.lower() in OPTIMIZERS:
        return OPTIMIZERS[spec.lower()]()
    raise unknown_name("optimizer", spec, OPTIMIZERS, " or pass an Optimizer instance")


OPTIMIZER_CLASSES = {c.__name__: c for c in (SGD, Adam, AdamW, RMSProp)}


def optimizer_from_config(name: str, config: dict) -> Optimizer:
    """The optimizer ``name`` (a class name, e.g. "Adam") built from ``get_config()``'s output."""
    if name not in OPTIMIZER_CLASSES:
        raise unknown_name("optimizer class", name, OPTIMIZER_CLASSES)
    cls = OPTIMIZER_CLASSES[name]
    if "betas" in config:
        config = {**config, "betas": tuple(config["betas"])}
    return cls(**config)
