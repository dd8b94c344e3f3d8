"""bpnet layers: each derives its backward pass in its docstring."""
from .activations import ELU, Activation, Identity, LeakyReLU, ReLU, Sigmoid, Tanh, ACTIVATION_LAYERS
from .base import BuildContext, Layer, layer_from_config, layer_to_config
from .batchnorm import BatchNorm1d
from .dense import Dense
from .dropout import Dropout
from .flatten import Flatten
from .residual import Residual
from .rnn import RNN
from .softmax import Softmax

__all__ = ["Layer", "BuildContext", "Dense", "Activation", "Identity", "ReLU", "Sigmoid", "Tanh",
           "LeakyReLU", "ELU", "Softmax", "Dropout", "BatchNorm1d", "Residual", "Flatten", "RNN",
           "layer_from_config", "layer_to_config", "ACTIVATION_LAYERS"]
