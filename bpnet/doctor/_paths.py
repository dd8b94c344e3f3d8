"""Layer paths: ``"2"`` is ``model.layers[2]``, ``"3.0.1"`` a layer inside a container.

They match the prefixes of ``model.parameters()`` names (``"2.W"``), so a
gradient, an activation and a finding about the same layer share one key.
"""
from __future__ import annotations


def leaf_layers(model, prefix: str = ""):
    """Yield ``(path, layer)`` for every layer without children, depth first."""
    for i, layer in enumerate(model.sublayers()):
        path = f"{prefix}{i}"
        if layer.sublayers():
            yield from leaf_layers(layer, path + ".")
        else:
            yield path, layer


def layer_at(model, path: str):
    """The layer at ``path`` (None if there is none)."""
    layer = model
    try:
        for part in str(path).split("."):
            layer = layer.sublayers()[int(part)]
    except (IndexError, ValueError):
        return None
    return layer


def describe(model, path) -> str:
    """``"layer 2 (dense_1, Dense)"``; just ``"layer 2"`` without a model."""
    layer = layer_at(model, path) if model is not None else None
    if layer is None:
        return f"layer {path}"
    return f"layer {path} ({layer.name}, {type(layer).__name__})"


def param_layer(name: str) -> str:
    """``"3.0.W"`` -> ``"3.0"``: the path of the layer owning a parameter."""
    return name.rsplit(".", 1)[0]
