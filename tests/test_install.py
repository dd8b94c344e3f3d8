"""Packaging: the wheel builds without warnings and works installed on its own, outside the checkout.

The wheel test builds from a copy of the checkout (``python -m build
--no-isolation``, so nothing is downloaded), installs the wheel with
``--no-deps`` into a fresh venv that sees only bpnet's core dependencies
(numpy, scipy, numba, tqdm and what they need, linked from this environment;
no scikit-learn, matplotlib or tensorboardX), and runs ``bpnet --version``,
``bpnet train --dataset iris`` and the README's tour from a folder outside
the checkout.
"""
import importlib.metadata as metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
import venv
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ("numpy", "scipy", "numba", "tqdm")
COPY_IGNORE = shutil.ignore_patterns(".venv", ".git", "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache",
                                     ".hypothesis", "*.nbi", "*.nbc", "out")


def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_every_package_folder_is_listed_in_pyproject():
    config = pyproject()["tool"]["setuptools"]
    listed = set(config["packages"])
    mapped = {name: ROOT / folder for name, folder in config.get("package-dir", {}).items()}

    def folder(name):
        for prefix, path in mapped.items():
            if name == prefix or name.startswith(prefix + "."):
                return path.joinpath(*name[len(prefix):].split(".")[1:])
        return ROOT.joinpath(*name.split("."))
    on_disk = {".".join(p.relative_to(ROOT).parts[:-1]) for p in (ROOT / "bpnet").rglob("__init__.py")}
    on_disk |= {name + "." + p.parent.name for name, root in mapped.items() for p in root.glob("*/__init__.py")}
    assert on_disk <= listed, sorted(on_disk - listed)
    assert all(folder(name).is_dir() for name in listed), [n for n in listed if not folder(n).is_dir()]
    # the data-only packages hold what package-data says
    data = config["package-data"]
    assert sorted(p.name for p in folder("bpnet.kernels.cuda").glob(data["bpnet.kernels.cuda"][0]))
    assert len(list(folder("bpnet._datasets").glob("*.npz"))) == 4


def test_the_distribution_name_is_not_bpnet():
    project = pyproject()["project"]
    assert project["name"] == "bpnet-framework" and project["scripts"] == {"bpnet": "bpnet.cli:main"}
    for extra in ("tensorboard", "mpi", "gpu", "plot", "sklearn", "optuna"):
        assert extra in project["optional-dependencies"]
    sources = [ROOT / "README.md", *(ROOT / "bpnet").rglob("*.py"), *(ROOT / "examples").glob("*.py")]
    installs = [(path.name, line) for path in sources
                for line in re.findall(r"pip install[^\n`]*", path.read_text(encoding="utf-8"))]
    assert len(installs) > 10
    wrong = [(name, line) for name, line in installs if re.search(r"""(?<![-\w])bpnet(\[|['"\s]|$)""", line)]
    assert not wrong, wrong


@pytest.mark.parametrize("name, shape", [("digits", (1797, 64)), ("iris", (150, 4)), ("wine", (178, 13)),
                                         ("breast_cancer", (569, 30))])
def test_the_bundled_data_sets_are_scikit_learns(name, shape):
    import bpnet.datasets as ds
    X, y = getattr(ds, f"load_{name}")()
    assert X.shape == shape and X.dtype == np.float32 and y.dtype == np.int64
    datasets = pytest.importorskip("sklearn.datasets")
    X_ref, y_ref = getattr(datasets, f"load_{name}")(return_X_y=True)
    np.testing.assert_array_equal(X, X_ref.astype(np.float32))
    np.testing.assert_array_equal(y, y_ref)


# --------------------------------------------------------------------------- the wheel, installed alone
def core_distributions():
    """The installed distributions bpnet's core dependencies need, transitively (no extras)."""
    from packaging.requirements import Requirement
    seen, todo = {}, list(CORE)
    while todo:
        name = todo.pop()
        key = re.sub(r"[-_.]+", "-", name).lower()
        if key in seen:
            continue
        dist = metadata.distribution(name)
        seen[key] = dist
        for spec in dist.requires or []:
            req = Requirement(spec)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return list(seen.values())


def link_core_dependencies(target: Path):
    """Symlink each core distribution's top-level files and metadata into ``target``."""
    target.mkdir()
    for dist in core_distributions():
        tops = {Path(str(f)).parts[0] for f in dist.files or []}
        for top in tops:
            src = Path(dist.locate_file(top))
            if src.exists() and not (target / top).exists() and top != ".." and not top.endswith(".pth"):
                (target / top).symlink_to(src)


def build_wheel(tmp_path) -> Path:
    pytest.importorskip("build", reason="needs the 'build' package (in the dev extra)")
    src = tmp_path / "src"
    shutil.copytree(ROOT, src, ignore=COPY_IGNORE)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    proc = subprocess.run([sys.executable, "-m", "build", "--no-isolation", "--outdir", str(tmp_path / "dist"),
                           str(src)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    warnings = [line for line in (proc.stdout + proc.stderr).splitlines() if re.search(r"warn", line, re.I)]
    assert not warnings, warnings
    wheels = list((tmp_path / "dist").glob("bpnet_framework-*.whl"))
    assert len(wheels) == 1 and list((tmp_path / "dist").glob("bpnet_framework-*.tar.gz"))
    return wheels[0]


def tour_code() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## A 30-line tour", 1)[1]
    return section.split("```python\n", 1)[1].split("```", 1)[0]


@pytest.mark.slow
def test_the_wheel_installed_alone_runs_the_cli_and_the_tour(tmp_path):
    wheel = build_wheel(tmp_path)
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=False, symlinks=True).create(env_dir)
    python = env_dir / "bin" / "python"
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    link_core_dependencies(tmp_path / "core")
    (site / "core-dependencies.pth").write_text(str(tmp_path / "core") + "\n")
    pip = subprocess.run([sys.executable, "-m", "pip", "--python", str(python), "install", "--no-deps",
                          "--no-index", "--quiet", str(wheel)], capture_output=True, text=True, timeout=120)
    assert pip.returncode == 0, pip.stderr[-3000:]

    outside = tmp_path / "elsewhere"
    outside.mkdir()
    env = {"PATH": f"{env_dir / 'bin'}:/usr/bin:/bin", "HOME": str(tmp_path), "BPNET_BACKEND": "numpy",
           "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}

    def run(*args, check=True):
        proc = subprocess.run(list(args), cwd=outside, env=env, capture_output=True, text=True, timeout=300)
        if check:
            assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        return proc
    where = run(str(python), "-c", "import importlib.util as u, bpnet; print(bpnet.__file__); "
                                   "print(u.find_spec('sklearn'))").stdout
    assert str(site) in where and str(ROOT) not in where and "None" in where    # the wheel's bpnet, no sklearn
    assert run("bpnet", "--version").stdout.strip() == f"bpnet {pyproject()['project']['version']}"
    out = run("bpnet", "train", "--dataset", "iris", "--hidden", "16", "--epochs", "40", "--lr", "0.01",
              "--quiet").stdout
    assert "dataset iris: 120 train / 30 test samples" in out
    assert float(re.search(r"test accuracy (\d\.\d+)", out).group(1)) >= 0.8
    bad = run("bpnet", "train", "--hidden", "128x64", check=False)
    assert bad.returncode == 2 and "--hidden" in bad.stderr and "Traceback" not in bad.stderr
    tour = run(str(python), "-c", tour_code()).stdout
    assert float(re.search(r"'accuracy': ([0-9.]+)", tour).group(1)) > 0.9          # the Keras-style fit
    errors = [float(m) for m in re.findall(r"^\S+\s+([0-9.]+e[-+]\d+)\s+\d+", tour, re.M)]
    assert len(errors) == 5 and max(errors) < 1e-6                                    # the gradient check
