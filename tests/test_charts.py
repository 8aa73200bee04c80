"""The SVG line charts: well-formed, a polyline per series with a point per finite value,
readable ticks, and no failure on degenerate data."""

import math
import xml.etree.ElementTree as ET

import pytest

from layered.tasks.charts import SVG, Chart, line_chart, write_charts


def _parse(path):
    return ET.parse(path).getroot()


def _polylines(svg):
    return [p.get("points").split() for p in svg.iter(f"{{{SVG}}}polyline")]


def _texts(svg):
    return [t.text for t in svg.iter(f"{{{SVG}}}text")]


def test_a_chart_is_a_standalone_svg_with_a_polyline_per_series(tmp_path):
    path = line_chart(tmp_path / "c.svg",
                      [("bound", [1, 2, 3], [1e6, 40.0, 0.0]), ("error", [1, 2, 3], [None, 5, 0])],
                      "resolution", "|error|", y_scale="symlog", integer_x=True, title="run")
    text = path.read_text()
    assert text.startswith('<?xml version="1.0" encoding="UTF-8"?>')
    svg = _parse(path)
    assert svg.tag == f"{{{SVG}}}svg"
    assert (svg.get("width"), svg.get("height"), svg.get("viewBox")) == ("600", "400",
                                                                         "0 0 600 400")
    assert [len(p) for p in _polylines(svg)] == [3, 2]
    assert {"resolution", "|error|", "run", "bound", "error"} <= set(_texts(svg))


def test_symlog_ticks_are_decades_labelled_plainly(tmp_path):
    svg = _parse(line_chart(tmp_path / "c.svg", [("bound", [1, 2, 3], [3e6, 1200.0, 0.0])],
                            "resolution", "bound", y_scale="symlog", integer_x=True))
    texts = _texts(svg)
    assert {"0", "1", "10", "100", "1000", "1e4", "1e5", "1e6"} <= set(texts)
    assert {"1", "2", "3"} <= set(texts) and "1.5" not in texts  # whole-number x ticks


def test_symlog_mirrors_negative_decades(tmp_path):
    svg = _parse(line_chart(tmp_path / "c.svg", [("", [0, 1], [-500.0, 20.0])], "x", "y",
                            y_scale="symlog"))
    assert {"-1000", "-100", "-10", "-1", "0", "1", "10", "100"} <= set(_texts(svg))


@pytest.mark.parametrize("series", [
    [("one point", [1], [2.0])],
    [("zeros", [1, 2, 3], [0.0, 0.0, 0.0])],
    [("same x", [2, 2, 2], [1.0, -3.0, 5.0])],
    [("not finite", [1, 2, 3, math.inf], [math.nan, 1.0, -math.inf, 2.0])],
    [("negative", [-3, -1], [-1e9, -0.5])],
    [("empty", [], []), ("all none", [1, 2], [None, None])],
])
@pytest.mark.parametrize("y_scale", ["linear", "symlog"])
def test_degenerate_data_still_makes_a_chart(tmp_path, series, y_scale):
    svg = _parse(line_chart(tmp_path / "c.svg", series, "x", "y", y_scale=y_scale))
    finite = [sum(x is not None and y is not None and math.isfinite(x) and math.isfinite(y)
                  for x, y in zip(xs, ys, strict=True)) for _, xs, ys in series]
    assert [len(p) for p in _polylines(svg)] == [n for n in finite if n]
    coordinates = [float(c) for p in _polylines(svg) for point in p for c in point.split(",")]
    assert all(math.isfinite(c) for c in coordinates)


def test_text_is_escaped_for_xml(tmp_path):
    path = line_chart(tmp_path / "c.svg", [("a < b & c", [1, 2], [1, 2])], 'x "quoted"',
                      "<y>", title="R&D")
    assert "a &lt; b &amp; c" in path.read_text()
    assert {"a < b & c", 'x "quoted"', "<y>", "R&D"} <= set(_texts(_parse(path)))


def test_panels_lie_side_by_side(tmp_path):
    charts = [Chart([("", [1, 2], [0.5, 0.9])], "resolution", "accuracy"),
              Chart([("", [1, 2], [1.0, 0.2])], "resolution", "active")]
    svg = _parse(write_charts(tmp_path / "c.svg", charts, width=500))
    assert svg.get("viewBox") == "0 0 1000 400"
    first, second = ([float(pt.split(",")[0]) for pt in p] for p in _polylines(svg))
    assert max(first) < 500 < min(second)


def test_an_unknown_scale_is_refused(tmp_path):
    with pytest.raises(ValueError, match="y_scale must be 'linear' or 'symlog'"):
        line_chart(tmp_path / "c.svg", [], "x", "y", y_scale="log")  # type: ignore[arg-type]
