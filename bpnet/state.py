"""The model's state, enumerated once, and in-memory snapshots of it.

Everything a training step changes, or a saved model must carry, is listed
here and nowhere else.  Arrays (live, on the model's device):

    param/<name>          every parameter (views into ``model.flat_params``)
    buffer/<name>         non-trainable buffers (BatchNorm running statistics)
    loss_scaler/master    the float32 master weights under float16 mixed precision
    optimizer/<key>       the optimizer's state arrays (moments, velocity)

and small values (numbers and generator states, JSON-able):

    optimizer             step count t, lr, a schedule's base lr
    loss_scaler           scale, good_steps, overflows
    rng                   the model's generators and every layer's own (Dropout)

``to`` (moving devices), ``save``/``load``, rollback snapshots
(:class:`TrainingState`) and the MPI broadcast all walk :func:`array_slots`
and :func:`values`, so a new piece of state is added here once.
"""
from __future__ import annotations

KINDS = ("param", "buffer", "master", "optimizer")


def array_slots(model, kinds=KINDS, flat: bool = False):
    """Yield ``(name, holder, key)`` for every state array: ``holder[key]`` is the live array.

    ``holder`` is a dict (or an object's ``vars``), so a caller can read the
    array, write into it in place, or put a new array in its place (moving
    devices).  ``flat=True`` lists the parameters as the one flat buffer
    ``"params"`` instead of one slot per parameter (one copy instead of many).
    """
    if "param" in kinds and model.flat_params is not None:
        if flat:
            yield "params", vars(model), "flat_params"
        else:
            for name, owner, key in model.named_parameters():
                yield f"param/{name}", owner.params, key
    if "buffer" in kinds:
        for name, owner, key in model.named_buffers():
            yield f"buffer/{name}", owner.buffers, key
    scaler = model.loss_scaler
    if "master" in kinds and scaler is not None and scaler.master_params is not None and scaler.separate_master:
        yield "loss_scaler/master", vars(scaler), "master_params"
    opt = model.optimizer
    if "optimizer" in kinds and opt is not None:
        for key in sorted(opt.state):
            if opt.state[key] is not None:
                yield f"optimizer/{key}", opt.state, key


def generators(model) -> dict:
    """``{name: numpy Generator}``: the model's two and every layer's own, by position in ``walk()``."""
    gens = {"init": model.init_rng, "data": model.data_rng}
    for i, layer in enumerate(model.walk()):
        if getattr(layer, "rng", None) is not None and layer is not model:
            gens[f"layer/{i}"] = layer.rng
    return gens


def values(model) -> dict:
    """The small state: optimizer counters, loss-scaler counters, generator states (JSON-able)."""
    out = {"rng": {name: gen.bit_generator.state for name, gen in generators(model).items()}}
    opt = model.optimizer
    if opt is not None:
        out["optimizer"] = {"t": int(opt.t), "lr": float(opt.lr)}
        if getattr(opt, "initial_lr", None) is not None:
            out["optimizer"]["initial_lr"] = float(opt.initial_lr)
    scaler = model.loss_scaler
    if scaler is not None:
        out["loss_scaler"] = {"scale": float(scaler.scale), "good_steps": int(scaler.good_steps),
                              "overflows": int(scaler.overflows)}
    return out


def load_values(model, state: dict):
    """Inverse of :func:`values` (missing entries are left as they are)."""
    gens = generators(model)
    for name, gen_state in state.get("rng", {}).items():
        if name in gens:
            gens[name].bit_generator.state = gen_state
    opt, saved = model.optimizer, state.get("optimizer")
    if opt is not None and saved:
        opt.t, opt.lr = int(saved["t"]), float(saved["lr"])
        if "initial_lr" in saved:
            opt.initial_lr = float(saved["initial_lr"])
    scaler, saved = model.loss_scaler, state.get("loss_scaler")
    if scaler is not None and saved:
        scaler.scale, scaler.good_steps = float(saved["scale"]), int(saved["good_steps"])
        scaler.overflows = int(saved.get("overflows", 0))


def _copy_into(dst, src):
    """Copy ``src`` into ``dst`` when shapes and dtypes agree (no allocation), else a fresh copy."""
    if dst is not None and dst.shape == src.shape and dst.dtype == src.dtype:
        dst[...] = src
        return dst
    return src.copy()


class TrainingState:
    """An in-memory copy of what a training step changes, restorable bit for bit.

    Holds the flat parameter buffer, every buffer (BatchNorm running
    statistics), the float32 master weights under mixed precision and, with
    ``optimizer=True``, the optimizer's state arrays and step count.
    Capturing again reuses the arrays, so a snapshot per step costs one memcpy
    of the parameters and optimizer state, no allocation.
    """

    def __init__(self, model, optimizer: bool = True):
        self.kinds = KINDS if optimizer else ("param", "buffer", "master")
        self.arrays: dict = {}
        self.opt_t = 0
        self.capture(model)

    def capture(self, model):
        self.arrays = {name: _copy_into(self.arrays.get(name), holder[key])
                       for name, holder, key in array_slots(model, self.kinds, flat=True)}
        if "optimizer" in self.kinds and model.optimizer is not None:
            self.opt_t = model.optimizer.t
        return self

    def restore(self, model):
        for name, holder, key in array_slots(model, self.kinds, flat=True):
            if name in self.arrays:
                holder[key][...] = self.arrays[name]
            elif name.startswith("optimizer/"):
                holder[key][...] = 0       # state created after the capture started out as zeros
        scaler = model.loss_scaler
        if scaler is not None and "loss_scaler/master" not in self.arrays:
            scaler.sync_from_model()
        if "optimizer" in self.kinds and model.optimizer is not None:
            model.optimizer.t = self.opt_t
        return model
