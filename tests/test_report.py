"""The HTML diagnosis report: one self-contained page, checked as text and as rendered by Chromium."""
import base64
import json
import os
import re
import shutil
import subprocess

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from bpnet import SGD, ConfigError, Dense, History, ReLU, Sequential  # noqa: E402
from bpnet.cli import main  # noqa: E402
from bpnet.data import Standardizer, load_digits  # noqa: E402
from bpnet.doctor import Finding  # noqa: E402
from bpnet.doctor.report import activation_histograms, write_html_report  # noqa: E402

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--hide-scrollbars",
                  "--mute-audio"]


@pytest.fixture(scope="module")
def dying_run():
    """SGD at lr 2 kills the ReLUs of a digits MLP: a run with findings, gradients and histograms."""
    X, y = load_digits()
    X = Standardizer().fit(X).transform(X)[:600]
    y = y[:600]
    model = Sequential([Dense(64, init="he_normal"), ReLU(), Dense(32, init="he_normal"), ReLU(), Dense(10)],
                       seed=0, backend="numpy")
    model.compile(loss="cross_entropy", optimizer=SGD(lr=2.0))
    history = model.fit(X, y, epochs=6, batch_size=32, validation_split=0.2, verbose=0,
                        doctor=True)
    return model, history, X


def images(page):
    return [base64.b64decode(m) for m in re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)]


def test_report_is_one_self_contained_page(dying_run, tmp_path, capsys):
    model, history, X = dying_run
    capsys.readouterr()
    path = history.report(tmp_path / "report.html", model=model, x=X[:256])
    page = open(path, encoding="utf-8").read()
    # nothing to fetch: no scripts, no external sources or style sheets
    assert "<script" not in page and not re.search(r'(src|href)="(?!data:)', page)
    pngs = images(page)
    assert len(pngs) == 4 and all(p[:8] == PNG_MAGIC and len(p) > 5000 for p in pngs)   # curves, grads, acts, lr
    for caption in ("Loss and metrics per epoch", "Gradient norm of each layer", "Histogram of each layer",
                    "Learning rate"):
        assert caption in page
    # the headline is the most severe finding, with its remedy; every finding follows with its evidence
    worst = min(("error", "warning", "info").index(f.severity) for f in history.findings)
    severity = ("error", "warning", "info")[worst]
    headline = page.split('<div class="headline', 1)[1].split("</div></div>", 1)[0]
    assert headline.startswith(f' {severity}"') and "Remedy:" in headline
    assert any(f.code in headline for f in history.findings if f.severity == severity)
    assert "DYING_RELU" in {f.code for f in history.findings}
    for f in history.findings:
        assert f"<code>{f.code}</code>" in page
        for key in f.evidence:
            assert f"<td>{key}</td>" in page


def test_report_lists_repair_attempts_and_escapes_text(tmp_path):
    h = History()
    for e, loss in enumerate([2.0, 1.0, 0.5]):
        h.append(e, {"loss": loss, "lr": 0.1})
    repairs = [{"attempt": 1, "change": "lr 1.0 -> 0.1", "outcome": "loss finite"},
               {"attempt": 2, "change": "init='he_normal'", "outcome": "val_accuracy 0.95"}]
    odd = Finding("PLATEAU", "warning", "loss <flat> & stuck", evidence={"window": 5}, remedy="raise lr")
    page = open(write_html_report(h, tmp_path / "r.html", findings=[odd], repairs=repairs), encoding="utf-8").read()
    assert "Repair attempts" in page and "<td>lr 1.0 -&gt; 0.1</td>" in page and "<td>2</td>" in page
    assert "loss &lt;flat&gt; &amp; stuck" in page and "<flat>" not in page
    assert len(images(page)) == 2                         # curves and learning rate; no steps recorded


def test_a_repaired_run_shows_its_attempts_and_the_change_set(tmp_path, capsys):
    X, y = load_digits()
    X, y = Standardizer().fit(X).transform(X)[:600], y[:600]
    model = Sequential([Dense(64, init="he_normal"), ReLU(), Dense(32, init="he_normal"), ReLU(), Dense(10)],
                       seed=0, backend="numpy")
    model.compile(loss="cross_entropy", optimizer=SGD(lr=2.0))
    try:
        history = model.fit(X, y, epochs=6, batch_size=32, validation_split=0.2, verbose=0, doctor="repair")
    except (KeyError, TypeError, ValueError, ConfigError) as exc:      # no repair loop in this installation
        pytest.skip(f"fit(doctor='repair') is not available: {exc}")
    capsys.readouterr()
    rep = history.repair
    page = open(history.report(tmp_path / "repaired.html"), encoding="utf-8").read()
    section = page.split("<h2>Repair attempts</h2>", 1)[1].split("<h2>", 1)[0]
    assert str(rep).splitlines()[0] in section                        # "repair: fixed after 2 attempts ..."
    assert section.count("<tr>") == 1 + len(rep.attempts) and "(broken run)" in section
    for a in rep.attempts[1:]:
        assert f"<td>{a.remedy}</td>" in section.replace("&gt;", ">")
    assert rep.diff() and "Change set to apply" in section
    broken = rep.attempts[0].findings                                 # the diagnosis is the broken run's
    assert broken and all(f"<code>{f.code}</code>" in page for f in broken)


def test_without_matplotlib_the_report_still_has_its_text(monkeypatch, tmp_path):
    h = History()
    for e, loss in enumerate([2.0, 1.0]):
        h.append(e, {"loss": loss})
    monkeypatch.setitem(__import__("sys").modules, "matplotlib", None)
    page = open(write_html_report(h, tmp_path / "r.html", findings=[]), encoding="utf-8").read()
    assert "No problems found" in page and not images(page)
    assert page.count("Not drawn:") == 1 and "matplotlib" in page.split("Not drawn:")[1]


def test_a_healthy_report_says_no_problems_found(tmp_path):
    h = History()
    for e, loss in enumerate([1.0, 0.6, 0.4]):
        h.append(e, {"loss": loss})
    page = open(write_html_report(h, tmp_path / "ok.html", findings=[]), encoding="utf-8").read()
    assert 'class="headline ok"' in page and "No problems found" in page


def test_the_page_keeps_the_doctors_order_and_names_what_follows_from_what(tmp_path):
    h = History()
    for e, loss in enumerate([3.1, 2.4, 2.3]):
        h.append(e, {"loss": loss})
    findings = [Finding("LR_TOO_HIGH", "warning", "the learning rate looks too high", remedy="divide it by 10"),
                Finding("DYING_RELU", "error", "all units dead", where="layer 3", caused_by="LR_TOO_HIGH")]
    page = open(write_html_report(h, tmp_path / "p.html", findings=findings), encoding="utf-8").read()
    headline = page[page.index('class="headline'):page.index("<h2")]
    assert "LR_TOO_HIGH" in headline and "DYING_RELU" not in headline      # the root cause, not the louder symptom
    assert page.index("<code>LR_TOO_HIGH</code>") < page.index("<code>DYING_RELU</code>")
    assert "follows from LR_TOO_HIGH" in page


def test_history_report_needs_a_registered_writer(monkeypatch, tmp_path):
    monkeypatch.setattr(History, "_report_writer", None)
    with pytest.raises(ConfigError, match="no report writer is registered"):
        History().report(tmp_path / "x.html")
    assert not (tmp_path / "x.html").exists()


def test_the_engine_history_does_not_import_the_report_or_the_doctor():
    import ast

    import bpnet.history
    tree = ast.parse(open(bpnet.history.__file__, encoding="utf-8").read())
    imported = [getattr(node, "module", None) or "" for node in ast.walk(tree)
                if isinstance(node, (ast.Import, ast.ImportFrom))]
    imported += [alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names]
    assert imported and not [m for m in imported if re.search(r"doctor|report|lab|cli", m)], imported


def test_activation_histograms_count_every_output(dying_run):
    model, _, X = dying_run
    hist = activation_histograms(model, X[:100], bins=10)
    assert list(hist) == ["0: Dense", "1: ReLU", "2: Dense", "3: ReLU", "4: Dense"]
    assert sum(hist["0: Dense"]["counts"]) == 100 * 64 and len(hist["0: Dense"]["edges"]) == 11
    out = model.predict(X[:100])
    assert hist["4: Dense"]["edges"][0] == pytest.approx(float(out.min()), rel=1e-5, abs=1e-6)
    h1 = model.layers[1].forward(model.layers[0].forward(X[:100].astype(np.float32)))
    assert hist["1: ReLU"]["zero_frac"] == pytest.approx(float(np.mean(h1 == 0)))
    json.dumps(hist)                                      # saved with a run record as it is


def test_cli_train_and_doctor_write_the_report(tmp_path, capsys):
    run, page1, page2 = tmp_path / "run.json", tmp_path / "train.html", tmp_path / "doctor.html"
    rc = main(["train", "--dataset", "moons", "--hidden", "8", "--epochs", "3", "--backend", "numpy", "--quiet",
               "--doctor", "--history-out", str(run), "--html", str(page1)])
    assert rc == 0 and f"HTML report written to {page1}" in capsys.readouterr().out
    assert main(["doctor", str(run), "--html", str(page2)]) == 0
    assert f"HTML report written to {page2}" in capsys.readouterr().out
    for page in (page1, page2):                           # the run record keeps the activation histograms
        text = page.read_text(encoding="utf-8")
        assert "Histogram of each layer" in text and len(images(text)) == 4


# --------------------------------------------------------------------------- in a real browser
def chromium():
    for name in ("chromium", "chromium-browser", "google-chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


def screenshot(page, png, tmp_path, width=1200, height=3000):
    profile = tmp_path / "chromium-profile"
    proc = subprocess.run([chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", f"--screenshot={png}",
                           f"--window-size={width},{height}", page.as_uri()],
                          capture_output=True, text=True, timeout=120)
    assert png.exists(), proc.stderr[-2000:]
    from matplotlib.image import imread
    return imread(png)[..., :3]


def coloured_pixels(img):
    """Pixels with clearly unequal channels: plot lines, bars and colour bars, not black/grey text."""
    return (img.max(axis=2) - img.min(axis=2)) > 0.25


@pytest.mark.skipif(chromium() is None, reason="needs Chromium (apt-get install chromium; .ci/run installs it)")
def test_report_renders_with_its_plots_in_headless_chromium(dying_run, tmp_path):
    model, history, X = dying_run
    page = tmp_path / "report.html"
    history.report(page, model=model, x=X[:256], title="dying ReLU (SGD lr 2.0)")
    img = screenshot(page, tmp_path / "report.png", tmp_path)
    assert img.shape[1] == 1200
    # the same page with its figures left out is the control: text, badges and the headline's bar only
    bare = tmp_path / "bare.html"
    bare.write_text(re.sub(r'<img [^>]*>', "", page.read_text(encoding="utf-8")), encoding="utf-8")
    control = screenshot(bare, tmp_path / "bare.png", tmp_path)
    drawn, base = coloured_pixels(img), coloured_pixels(control)
    assert drawn.sum() > 5 * base.sum() and drawn.sum() - base.sum() > 15_000      # pixels, of 3.6 million
    # each figure is drawn: the coloured pixels fall in several separate bands down the page
    rows = np.flatnonzero(drawn.sum(axis=1) > 5)
    bands = 1 + int(np.sum(np.diff(rows) > 40))
    assert bands >= 4, bands
    assert len(np.unique((img[drawn] * 255).astype(np.uint8), axis=0)) > 200  # curves, bars, colour bars
    if os.environ.get("BPNET_REPORT_SCREENSHOT"):           # the README's picture
        shutil.copy(tmp_path / "report.png", os.environ["BPNET_REPORT_SCREENSHOT"])


def test_a_repaired_cli_run_keeps_its_attempts_in_the_run_record(tmp_path, capsys):
    run, page = tmp_path / "run.json", tmp_path / "page.html"
    try:
        rc = main(["train", "--dataset", "digits", "--optimizer", "sgd", "--lr", "2", "--epochs", "6", "--repair",
                   "--backend", "numpy", "--quiet", "--history-out", str(run)])
    except SystemExit:
        pytest.skip("this bpnet train has no --repair")
    capsys.readouterr()
    rows = json.loads(run.read_text())["repairs"]
    assert rc == 0 and len(rows) >= 2 and rows[0]["for"] == "(broken run)" and rows[1]["remedy"]
    assert main(["doctor", str(run), "--html", str(page)]) == 0
    section = page.read_text(encoding="utf-8").split("<h2>Repair attempts</h2>", 1)[1].split("<h2>", 1)[0]
    assert section.count("<tr>") == 1 + len(rows) and f"<td>{rows[1]['remedy']}</td>" in section
