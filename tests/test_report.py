"""A run's plots: SVG files written directly, in about a millisecond, with no matplotlib."""

import subprocess
import sys
import textwrap
import time
import xml.etree.ElementTree as ET

from layered.tasks.charts import SVG
from layered.tasks.report import plot_matmul, plot_mnist

MATMUL_ENTRIES = [
    {"resolution": 1, "elapsed_s": 0.12, "bound": 3.5e6, "max_abs_error": 2.1e5},
    {"resolution": 2, "elapsed_s": 0.31, "bound": 1.2e3, "max_abs_error": None},
    {"resolution": 3, "elapsed_s": 0.52, "bound": 0.0, "max_abs_error": 0.0},
]


def _points(path):
    return [len(p.get("points").split())
            for p in ET.parse(path).getroot().iter(f"{{{SVG}}}polyline")]


def test_matmul_plots_show_the_bound_and_the_measured_errors(tmp_path):
    paths = plot_matmul(MATMUL_ENTRIES, tmp_path / "plots")
    assert [p.name for p in paths] == ["bound_error_by_resolution.svg", "bound_error_by_time.svg"]
    assert [_points(p) for p in paths] == [[3, 2], [3, 2]]  # the error where it was measured


def test_mnist_plot_shows_accuracy_and_active_fraction_side_by_side(tmp_path):
    entries = [{"resolution": r, "elapsed_s": 0.1 * r, "accuracy": 0.8 + 0.05 * r,
                "active_fraction": 1 / r} for r in (1, 2, 3, 4)]
    (path,) = plot_mnist(entries, tmp_path)
    assert path.name == "accuracy_active_by_resolution.svg"
    assert _points(path) == [4, 4]


def test_matmul_plots_take_well_under_50_ms(tmp_path):
    plot_matmul(MATMUL_ENTRIES, tmp_path)
    t0 = time.perf_counter()
    plot_matmul(MATMUL_ENTRIES, tmp_path)
    assert time.perf_counter() - t0 < 0.05  # about 1 ms; matplotlib took about 120 ms


def test_plotting_imports_no_matplotlib(tmp_path):
    code = textwrap.dedent(f"""
        import sys
        from pathlib import Path
        from layered.tasks import report
        report.plot_matmul({MATMUL_ENTRIES!r}, Path({str(tmp_path)!r}))
        report.plot_mnist([{{"resolution": 1, "accuracy": 0.9, "active_fraction": 0.5}}],
                          Path({str(tmp_path)!r}))
        assert "matplotlib" not in sys.modules, "matplotlib was imported"
    """)
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert len(list(tmp_path.glob("*.svg"))) == 3
