"""The model's training state, and in-memory snapshots of it."""
from __future__ import annotations


def _copy_into(dst, src):
    """Copy ``src`` into ``dst`` when shapes and dtypes agree (no allocation), else a fresh copy."""
    if dst is not None and dst.shape == src.shape and dst.dtype == src.dtype:
        dst[...] = src
        return dst
    return src.copy()


class TrainingState:
    """An in-memory copy of what a training step changes, restorable bit for bit.

    Holds the flat parameter buffer, every buffer (BatchNorm running
    statistics), and, with ``optimizer=True``, the optimizer's step count and
    state arrays (and the float32 master weights under mixed precision).
    Capturing again reuses the arrays, so a snapshot per step costs one memcpy
    of the parameters and optimizer state, no allocation.
    """

    def __init__(self, model, optimizer: bool = True):
        self.with_optimizer = optimizer
        self.params = self.master = None
        self.buffers: list = []
        self.opt_state: dict = {}
        self.opt_t = 0
        self.capture(model)

    def capture(self, model):
        self.params = _copy_into(self.params, model.flat_params)
        bufs = [owner.buffers[key] for _, owner, key in model.named_buffers()]
        if len(bufs) != len(self.buffers):
            self.buffers = [None] * len(bufs)
        self.buffers = [_copy_into(d, s) for d, s in zip(self.buffers, bufs)]
        scaler = getattr(model, "loss_scaler", None)
        if scaler is not None and scaler.master_params is not None and scaler.separate_master:
            self.master = _copy_into(self.master, scaler.master_params)
        if self.with_optimizer and model.optimizer is not None:
            self.opt_t = model.optimizer.t
            self.opt_state = {k: _copy_into(self.opt_state.get(k), v) for k, v in model.optimizer.state.items()
                              if v is not None}
        return self

    def restore(self, model):
        model.flat_params[...] = self.params
        for (_, owner, key), saved in zip(model.named_buffers(), self.buffers):
            owner.buffers[key][...] = saved
        scaler = getattr(model, "loss_scaler", None)
        if scaler is not None:
            if self.master is not None and scaler.master_params is not None:
                scaler.master_params[...] = self.master
            else:
                scaler.sync_from_model()
        if self.with_optimizer and model.optimizer is not None:
            model.optimizer.t = self.opt_t
            for k, state in model.optimizer.state.items():
                if state is not None:       # state created after the capture started out as zeros
                    state[...] = self.opt_state[k] if k in self.opt_state else 0
        return model
