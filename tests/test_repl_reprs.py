"""What a REPL shows: model.trace's table once, a short OverfitReport."""
import numpy as np

from bpnet.doctor import overfit_check, trace
from bpnet.doctor.trace import TraceTable, format_table
from doctor_helpers import blobs, mlp


def test_trace_returns_the_table_as_its_repr_and_prints_only_when_asked(capsys):
    X, _ = blobs(n=16)
    model = mlp(hidden=(8,))
    rows = trace(model, X)
    assert capsys.readouterr().out == ""                   # nothing printed by default ...
    assert isinstance(rows, TraceTable) and repr(rows) == str(rows) == format_table(rows)   # ... the repr is it
    lines = []
    printed = trace(model, X, print_fn=lines.append)
    assert lines == [format_table(printed)] and printed == rows
    assert "\n" not in repr(printed) and "printed above" in repr(printed) and str(printed) == lines[0]
    assert "no NaN/Inf" in repr(printed)
    X[2, 0] = np.nan
    with np.errstate(invalid="ignore"):
        bad = trace(model, X, print_fn=lines.append)
    assert "first NaN/Inf at 'input'" in repr(bad)


def test_overfit_report_repr_is_one_short_line():
    X, y = blobs(n=40)
    model = mlp(hidden=(16,))
    model.compile(loss="cross_entropy")
    report = overfit_check(model, X, y, n=10, steps=200)
    assert len(report.losses) == 201
    text = repr(report)
    assert "\n" not in text and len(text) < 160 and text.startswith(f"OverfitReport(passed={report.passed}")
    assert f"steps={report.steps}" in text and "losses" not in text
