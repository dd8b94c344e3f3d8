"""bpnet: a backpropagation network framework, derived by hand and built to be debugged.

    from bpnet import Sequential, Dense, ReLU, Adam
    model = Sequential([Dense(64, init="he_normal"), ReLU(), Dense(10)], seed=0)
    model.compile(loss="cross_entropy", optimizer=Adam(lr=1e-3))
    history = model.fit(X, y, epochs=20, batch_size=64)
"""
from . import data, init
from .backends import available_backends, get_backend
from .callbacks import (BackupAndRestore, Callback, EarlyStopping, GradientClipping, LearningRateScheduler,
                        ModelCheckpoint, NaNGuard, ReduceLROnPlateau, Reinitialize, TensorBoard, TerminateOnNaN)
from .clip import clip_grad_norm, clip_grad_value
from .distributed import DistributedTrainer
from .env import show_versions
from .errors import (BackendError, BpnetError, CheckpointError, ConfigError, DataError, GradcheckError,
                     LabelError, NonFiniteError, NotBuiltError, ShapeError)
from .gradcheck import GradcheckReport, gradcheck
from .history import History
from .init import calculate_gain
from .layers import (ELU, RNN, BatchNorm1d, Dense, Dropout, Flatten, Identity, Layer, LeakyReLU, ReLU, Residual,
                     Sigmoid, Softmax, Tanh)
from .losses import MAE, MSE, BCEWithLogits, CrossEntropy, FocalLoss, Loss
from .mixed_precision import LossScaler
from .model import Sequential
from . import doctor
from .doctor import Monitor, detect_anomaly, repair
from .doctor import report as _report  # noqa: F401  (registers History.report's writer)
from .optim import SGD, Adam, AdamW, Optimizer, RMSProp
from . import plot as _plot, profiler as _profiler  # noqa: F401  (register History.plot, model.profile)
from .schedules import CosineAnnealing, ExponentialLR, LinearWarmup, StepLR

__version__ = "0.1.0"

__all__ = [
    "Sequential", "Layer", "Dense", "Sigmoid", "Tanh", "ReLU", "LeakyReLU", "ELU", "Softmax", "Identity",
    "Dropout", "BatchNorm1d", "Residual", "Flatten", "RNN",
    "Loss", "MSE", "MAE", "CrossEntropy", "BCEWithLogits", "FocalLoss",
    "Optimizer", "SGD", "Adam", "AdamW", "RMSProp", "clip_grad_norm", "clip_grad_value",
    "gradcheck", "GradcheckReport", "History", "Callback", "calculate_gain", "init", "data",
    "get_backend", "available_backends", "DistributedTrainer",
    "BpnetError", "ShapeError", "LabelError", "DataError", "ConfigError", "NotBuiltError", "BackendError",
    "GradcheckError", "NonFiniteError", "CheckpointError", "__version__",
    "doctor", "Monitor", "detect_anomaly", "repair", "show_versions",
    "EarlyStopping", "ReduceLROnPlateau", "TerminateOnNaN", "ModelCheckpoint", "NaNGuard", "Reinitialize",
    "BackupAndRestore",
    "GradientClipping", "LearningRateScheduler", "StepLR", "ExponentialLR", "CosineAnnealing", "LinearWarmup",
    "LossScaler", "TensorBoard",
]
