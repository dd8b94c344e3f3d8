"""Plots: each writes a non-empty PNG and draws the numbers it was given."""
import math

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from bpnet import SGD, ConfigError, Dense, History, ReLU, Sequential, Tanh  # noqa: E402
from bpnet.data import make_spirals  # noqa: E402
from bpnet.plot import plot_activation_histograms, plot_grad_norms, plot_history, plot_lr  # noqa: E402
from bpnet.schedules import StepLR  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def assert_png(path):
    data = path.read_bytes()
    assert data[:8] == PNG_MAGIC and len(data) > 5000


@pytest.fixture(scope="module")
def run():
    X, y = make_spirals(120, noise=0.1, seed=0)
    model = Sequential([Dense(16, init="he_normal"), ReLU(), Dense(16), Tanh(), Dense(3)], seed=0, backend="numpy")
    model.compile(optimizer=SGD(lr=0.2, momentum=0.9))
    h = model.fit(X[:90], y[:90], epochs=6, batch_size=30, validation_data=(X[90:], y[90:]),
                  callbacks=[StepLR(2, gamma=0.5)], verbose=0)
    return model, h, X


def test_plot_history_draws_train_and_validation_curves(run, tmp_path):
    _, h, _ = run
    fig = plot_history(h, tmp_path / "history.png")
    assert_png(tmp_path / "history.png")
    titles = [ax.get_title() for ax in fig.axes]
    assert titles == ["loss", "accuracy"]
    loss_ax = fig.axes[0]
    lines = {line.get_label(): line for line in loss_ax.get_lines()}
    np.testing.assert_allclose(lines["training"].get_ydata(), h["loss"])
    np.testing.assert_allclose(lines["validation"].get_ydata(), h["val_loss"])
    np.testing.assert_array_equal(lines["training"].get_xdata(), [1, 2, 3, 4, 5, 6])
    assert loss_ax.get_yscale() == "log"
    fig2 = h.plot(tmp_path / "via_history.png")             # History.plot delegates here
    assert_png(tmp_path / "via_history.png")
    assert [ax.get_title() for ax in fig2.axes] == titles


def test_plot_lr_per_epoch(run, tmp_path):
    _, h, _ = run
    fig = plot_lr(h, tmp_path / "lr.png")
    assert_png(tmp_path / "lr.png")
    np.testing.assert_allclose(fig.axes[0].get_lines()[0].get_ydata(), [0.2, 0.2, 0.1, 0.1, 0.05, 0.05])
    with pytest.raises(ConfigError, match="no learning rate"):
        plot_lr(History())


def synthetic_steps():
    h = History()
    for step in range(0, 100, 10):
        h.steps.append({"step": step, "loss": 1.0 / (step + 1),
                        "grad_norm/0.W": 1e-1 * 0.5 ** (step / 10), "grad_norm/0.b": 1e-2,
                        "grad_norm/0": 1e-1 * 0.5 ** (step / 10), "grad_norm/2": 10.0 * 1.5 ** (step / 10),
                        "grad_norm/total": 10.0 * 1.5 ** (step / 10)})
    h.steps[4]["grad_norm/0"] = 0.0          # a dead layer
    h.steps[9]["grad_norm/2"] = math.inf     # a blow-up
    return h


def test_plot_grad_norms_per_layer_log_scale_marks_zero_and_inf(tmp_path):
    h = synthetic_steps()
    fig = plot_grad_norms(h, tmp_path / "grads.png")
    assert_png(tmp_path / "grads.png")
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert set(lines) == {"0", "2", "total", "zero / non-finite"}       # per layer, not per parameter
    assert list(lines["0"].get_xdata()) == [0, 10, 20, 30, 50, 60, 70, 80, 90]
    np.testing.assert_allclose(lines["2"].get_ydata(), [10.0 * 1.5 ** k for k in range(9)])
    assert sorted(lines["zero / non-finite"].get_xdata()) == [40, 90]
    params = plot_grad_norms(h, which="params")
    assert {line.get_label() for line in params.axes[0].get_lines()} == {"0.W", "0.b", "total"}
    with pytest.raises(ConfigError, match="doctor=True"):
        plot_grad_norms(History())


def test_plot_grad_norms_from_the_monitor(tmp_path):
    monitor = pytest.importorskip("bpnet.doctor.monitor")
    X, y = make_spirals(90, seed=0)
    model = Sequential([Dense(8), ReLU(), Dense(3)], seed=0, backend="numpy")
    model.compile(optimizer=SGD(lr=0.1))
    h = model.fit(X, y, epochs=3, batch_size=30, callbacks=[monitor.Monitor(every=1)], verbose=0)
    fig = plot_grad_norms(h, tmp_path / "monitor.png")
    assert_png(tmp_path / "monitor.png")
    assert len(fig.axes[0].get_lines()[0].get_xdata()) == 9


def test_plot_activation_histograms_shows_dead_units(run, tmp_path):
    model, _, X = run
    fig = plot_activation_histograms(model, X, tmp_path / "acts.png")
    assert_png(tmp_path / "acts.png")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 5
    assert visible[1].get_title().startswith("1: ReLU")
    dead = Sequential([Dense(4), ReLU()], seed=0, backend="numpy")
    dead.build((2,))
    dead.layers[0].params["b"][:] = -100.0
    fig = plot_activation_histograms(dead, X)
    assert "zero 100%" in fig.axes[1].get_title()


def colour_bar_labels(fig):
    bars = [ax for ax in fig.axes if ax.get_label() == "<colorbar>"]
    assert len(bars) == 1
    return [t.get_text() for t in bars[0].get_yticklabels()]


def test_plot_grad_norms_names_every_layer_on_a_colour_bar():
    h = History()
    for step in range(5):
        h.steps.append({"step": step, **{f"grad_norm/{i}": 10.0 ** -i for i in range(0, 20, 2)}})
    fig = plot_grad_norms(h)
    labels = colour_bar_labels(fig)
    assert labels[0] == "0" and labels[-1] == "18"                        # the first and the last layer
    assert set(labels) <= {str(i) for i in range(0, 20, 2)} and len(labels) >= 5
    lines = {line.get_label(): line for line in fig.axes[0].get_lines()}
    assert lines["0"].get_color() != lines["18"].get_color()              # a colour per layer
    assert fig.axes[0].get_legend() is None                              # nothing else to name


@pytest.fixture(scope="module")
def exploding():
    lab = pytest.importorskip("bpnet.lab")
    return lab.run("exploding_init", seed=0, variants=False)


def test_lab_plot_marks_the_first_nan_at_one_step_in_both_panels(exploding):
    from bpnet.lab.plot import first_nonfinite, plot_result
    fig = plot_result(exploding)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    loss_ax, grad_ax = panels[0], panels[2]                              # the broken run's column
    step, _ = first_nonfinite(exploding.broken)

    def marker(ax):
        marks = [line for line in ax.get_lines() if line.get_label().startswith("first NaN/Inf")]
        assert len(marks) == 1
        return marks[0].get_xdata()[0], marks[0].get_label()
    assert marker(loss_ax) == marker(grad_ax) and marker(loss_ax)[0] == step
    # it is the earliest non-finite signal: no loss and no gradient norm is NaN/Inf before it
    assert all(math.isfinite(v) for v in exploding.broken.step_loss[:step])
    assert all(math.isfinite(v) for r in exploding.broken.history.steps if r["step"] < step
               for k, v in r.items() if k.startswith("grad_norm/"))
    assert len([ax for ax in fig.axes if ax.get_label() == "<colorbar>"]) == 2   # layers named in both runs


def test_lab_plot_draws_both_activation_panels_on_one_scale(exploding):
    from bpnet.lab.plot import plot_result
    fig = plot_result(exploding)
    panels = [ax for ax in fig.axes if ax.get_label() != "<colorbar>"]
    broken, repaired = panels[4], panels[5]
    assert broken.get_xlabel().split(" (")[0] == repaired.get_xlabel().split(" (")[0] == "log10 |activation|"
    assert broken.get_xlim() == repaired.get_xlim()
