"""Callbacks: small stateful objects the training loop tells about every epoch and step.

base           the protocol (``Callback``), ``CallbackList``, the progress bar
stopping       EarlyStopping, ReduceLROnPlateau, TerminateOnNaN
checkpointing  ModelCheckpoint
backup         BackupAndRestore (resume an interrupted run bit for bit)
recovery       GradientClipping, NaNGuard, Reinitialize
schedule       LearningRateScheduler (and the base of the Schedule classes)
"""
from ..state import TrainingState
from .backup import BackupAndRestore
from .base import Callback, CallbackList, ProgressBar
from .checkpointing import ModelCheckpoint
from .recovery import GradientClipping, NaNGuard, Reinitialize, flat_slice
from .schedule import LearningRateScheduler, ScheduleCallback
from .stopping import EarlyStopping, ReduceLROnPlateau, TerminateOnNaN
from .tensorboard import TensorBoard

__all__ = ["Callback", "CallbackList", "ProgressBar", "EarlyStopping", "ReduceLROnPlateau", "TerminateOnNaN",
           "ModelCheckpoint", "BackupAndRestore", "GradientClipping", "NaNGuard", "Reinitialize", "flat_slice",
           "LearningRateScheduler", "ScheduleCallback", "TrainingState", "TensorBoard"]
