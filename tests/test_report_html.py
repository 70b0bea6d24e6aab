"""report.html says what report.md says, and its per-layer chart can be read: module names on lines of their own,
an axis that starts near the worst layer (not at 0 dB, where every layer looks alike), the budget drawn."""

from __future__ import annotations

import json
import re

import pytest

pytestmark = pytest.mark.slow


def test_report_html_holds_what_the_markdown_holds_and_a_readable_chart(demo_android):
    result, directory = demo_android
    assert result.code == 0, result.stderr
    page = (directory / "report.html").read_text()
    markdown = (directory / "report.md").read_text()
    report = json.loads((directory / "report.json").read_text())
    for artifact in report["artifacts"]:
        assert artifact["sha256"] in page and artifact["sha256"] in markdown
        assert artifact["latency_ms"]["runtime"] in page
    assert page.count("judged by: ") == markdown.count("judged by: ") == len(report["artifacts"])
    assert "min_sqnr_db 18" in page  # the int8 variants' own threshold

    int8 = next(a for a in report["artifacts"] if a["path"] == "model.int8.onnx")
    svg = page[page.index("<svg", page.index("<h3>model.int8.onnx</h3>")):]
    svg = svg[:svg.index("</svg>")]
    labels = [(m.group(2), float(m.group(1))) for m in re.finditer(r"<text x='\d+' y='([\d.]+)' font-size='12'>"
                                                                       r"([^<]+)</text>", svg)]
    assert [name for name, _ in labels] == [row["module"] for row in int8["layers"]]
    bars = [(float(y), float(w)) for y, w in re.findall(r"<rect x='\d+' y='([\d.]+)' width='([\d.]+)'", svg)]
    assert len(bars) == 2 * len(labels)
    for (_, label_y), (bar_y, _) in zip(labels, bars[::2], strict=True):
        assert label_y < bar_y  # the name sits above its bars, never under them
    widths = [w for _, w in bars]
    assert min(widths) < 0.8 * max(widths)  # the axis does not start at 0 dB: layers differ visibly
    ticks = [int(t) for t in re.findall(r">(-?\d+) dB</text>", svg)]
    lowest = min(min(row["sqnr_db_alone_at_output"], row["sqnr_db_accumulated"]) for row in int8["layers"])
    assert 0 < ticks[0] <= min(lowest, 18)
    assert "stroke-dasharray" in svg and "min_sqnr_db 18" in svg  # the budget line
