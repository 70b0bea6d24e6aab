"""HTML pieces both report kinds use (the classic report and the language-model section)."""

from __future__ import annotations

import html


def violations_html(report: dict) -> str:
    """Every budget violation of a report (its own and each artifact's), as a list; '' when there is none."""
    problems = list(report.get("violations", [])) + [
        f"{a['path']}: {v}" for a in report["artifacts"] for v in a["budget"]["violations"]]
    if not problems:
        return ""
    return ("<h2>Budget violations</h2><ul>" + "".join(f"<li class='fail'>{html.escape(p)}</li>" for p in problems)
            + "</ul>")
