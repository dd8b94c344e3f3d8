"""The layering of bpnet: the engine never imports what is built on it.

Every ``import`` in every engine module is read from its source (module
level and inside functions alike) and resolved to a module name; none may
reach the modules built on the engine.  See the README's architecture section.
"""
import ast
import pathlib

import pytest

import bpnet

ROOT = pathlib.Path(bpnet.__file__).parent

# built on the engine (or the public faces): the engine must not reach these
ABOVE = ("bpnet.doctor", "bpnet.lab", "bpnet.distributed", "bpnet.sklearn", "bpnet.cli", "bpnet.cli_args",
         "bpnet.plot", "bpnet.profiler", "bpnet.env", "bpnet.__main__")

def _is_engine(path: pathlib.Path) -> bool:
    name = module_name(path)
    return name != "bpnet" and not reaches_up(name)       # bpnet/__init__.py is the public face


def module_name(path: pathlib.Path) -> str:
    parts = ("bpnet",) + path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: pathlib.Path) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import statement in the file."""
    here = module_name(path)
    package = here if path.name == "__init__.py" else here.rsplit(".", 1)[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.append((node.lineno, mod))
            found += [(node.lineno, f"{mod}.{alias.name}") for alias in node.names]
    return found


def reaches_up(mod: str) -> bool:
    return any(mod == top or mod.startswith(top + ".") for top in ABOVE)


ENGINE = sorted(p for p in ROOT.rglob("*.py") if _is_engine(p))


def test_the_engine_module_list_is_what_the_readme_calls_the_engine():
    names = {module_name(p) for p in ENGINE}
    assert {"bpnet.model", "bpnet.container", "bpnet.training", "bpnet.io", "bpnet.state", "bpnet.data",
            "bpnet.losses", "bpnet.optim", "bpnet.history", "bpnet.layers.dense", "bpnet.callbacks.base",
            "bpnet.backends.numpy_backend"} <= names
    assert not any(reaches_up(n) for n in names)


@pytest.mark.parametrize("path", ENGINE, ids=lambda p: module_name(p))
def test_engine_module_imports_nothing_built_on_it(path):
    bad = [(line, mod) for line, mod in imported_modules(path) if reaches_up(mod)]
    assert not bad, f"{module_name(path)} reaches up to {bad}: plug in through bpnet.training's extension points"


def test_the_walker_sees_imports_inside_functions(tmp_path):
    src = ROOT / "model.py"
    mods = {m for _, m in imported_modules(src)}
    assert "bpnet.training" in mods and "bpnet.io.save_model" in mods    # module level and in a method


def test_fit_options_and_model_tools_are_registered_by_the_modules_above():
    from bpnet import model, training
    assert {"doctor", "detect_anomaly", "distributed"} <= set(training._FIT_OPTIONS)
    assert {"trace", "profile"} <= set(model._TOOLS)
    assert training._FIT_OPTIONS["doctor"].__module__ == "bpnet.doctor.callback"
    assert training._FIT_OPTIONS["distributed"].__module__.startswith("bpnet.distributed")
