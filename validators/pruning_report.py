"""The report's Pruning section, for every model kind: what was removed step by step and what it cost against the
unpruned model (the quality figures the kind measured: accuracy, top-1 and cosine; perplexity ratio and KL for a
language model), each artifact judged against the unpruned model, and the distillation curve."""

from __future__ import annotations

import html
import math

from targets.prune import said_limits

# a quality figure -> (column, how it is shown); a kind's rows carry the figures it measures, in this order
QUALITY_COLUMNS = {
    "accuracy_drop": ("accuracy drop", lambda v: f"{100 * v:+.2f} pt"),
    "ppl_ratio": ("PPL ratio", lambda v: f"{v:.3f}"),
    "kl_mean": ("KL mean", lambda v: f"{v:.4f}"),
    "top1_agreement": ("top-1 agree", lambda v: f"{100 * v:.2f}%"),
    "cosine": ("cosine", lambda v: f"{v:.4f}"),
}
SIZE_COLUMNS = {"macs_ratio": "MACs", "params_ratio": "parameters"}


def _quality_keys(rows: list[dict]) -> list[str]:
    return [key for key in QUALITY_COLUMNS if any(key in row for row in rows)]


def _cell(key: str, row: dict) -> str:
    return QUALITY_COLUMNS[key][1](row[key]) if row.get(key) is not None else "–"


def _tables(pruning: dict, artifacts: list[dict]) -> tuple[str, list[str], list[list[str]], list[str],
                                                           list[list[str]]]:
    """The summary line, the stages' columns and rows (before, each step, after recovery) against the unpruned
    model, and each artifact's columns and rows against the unpruned model."""
    recovery = pruning["recovery"]
    kept = f", weights of step {recovery['kept_step']} kept" if recovery.get("kept_step") is not None else ""
    stages = [("before", pruning["before"])] + [(f"step {r['step']}", r) for r in pruning["steps"]] + \
        [(f"after {recovery['steps']} distillation steps{kept}", pruning["after_recovery"])]
    sizes = [key for key in SIZE_COLUMNS if key in pruning["before"]]
    timed = any("latency_ms" in row for _, row in stages)
    quality = _quality_keys([row["quality"] for _, row in stages])
    columns = ["stage", "units removed", *(SIZE_COLUMNS[k] for k in sizes), *(["latency"] if timed else []),
               *(QUALITY_COLUMNS[k][0] for k in quality)]
    rows = [[stage, f"{100 * row['removed_share']:.2f}%", *(f"x{row[k]:.3f}" for k in sizes),
             *([f"{row['latency_ms']:.3f} ms" if "latency_ms" in row else "–"] if timed else []),
             *(_cell(k, row["quality"]) for k in quality)] for stage, row in stages]
    decoder = pruning.get("decoder_params")
    met = "met" if pruning["met"] else f"NOT met: {pruning['not_met']}"
    summary = (f"Pruned towards {said_limits(pruning['settings'])}: {met}. Units: "
               f"{pruning['units']}, ranked by {pruning['importance']}; "
               + ", ".join(f"{name} {m['units_before']} -> {m['units_after']}"
                           + (f" ({m['heads_before']} -> {m['heads_after']} heads)" if "heads_after" in m else "")
                           for name, m in pruning["modules"].items())
               + (f" (decoder parameters x{decoder['ratio']:.3f})" if decoder else "")
               + f". Pruning {pruning['seconds']['pruning']:.1f} s, distillation "
               f"{pruning['seconds']['recovery']:.1f} s "
               f"({recovery.get('loss', '')}"
               + ("; too few calibration samples to hold any out, so the held-out loss is the training rows'"
                  if recovery.get("held_out_samples") == 0 else "")
               + "). Every figure here is against the unpruned model; each artifact's own row above is against the "
               "pruned one.")
    costs = [(a["path"], a["against_unpruned"]) for a in artifacts if a.get("against_unpruned")]
    judged_keys = _quality_keys([cost["metrics"] for _, cost in costs])
    judged_columns = ["artifact", *(QUALITY_COLUMNS[k][0] for k in judged_keys), "[prune.budget]"]
    judged = [[path, *(_cell(k, cost["metrics"]) for k in judged_keys),
               "; ".join(cost["violations"]) or "within [prune.budget]"] for path, cost in costs]
    return summary, columns, rows, judged_columns, judged


def _markdown_table(columns: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)] + \
        ["| " + " | ".join(row) + " |" for row in rows]


def pruning_markdown(report: dict) -> list[str]:
    if "pruning" not in report:
        return []
    summary, columns, stages, judged_columns, judged = _tables(report["pruning"], report["artifacts"])
    out = ["## Pruning", "", summary, ""] + _markdown_table(columns, stages) + [""] + \
        _markdown_table(judged_columns, judged)
    curve = report["pruning"]["recovery"]["curve"]
    if curve:
        out += ["", "Distillation loss, training batch / held out: "
                + ", ".join(f"{train:.4g} / {held:.4g} (step {step})" for step, train, held in curve[::5])]
    return out + [""]


def pruning_html(report: dict) -> str:
    if "pruning" not in report:
        return ""
    e = html.escape
    summary, columns, stages, judged_columns, judged = _tables(report["pruning"], report["artifacts"])

    def table(names: list[str], rows: list[list[str]]) -> str:
        return ("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in names) + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in r) + "</tr>" for r in rows) + "</table>")

    return (f"<h2>Pruning</h2><p>{e(summary)}</p>{table(columns, stages)}"
            f"{table(judged_columns, judged)}{curve_svg(report['pruning']['recovery']['curve'])}")


def curve_svg(curve: list[list[float]]) -> str:
    """The held-out distillation loss over its steps, a line on a log axis."""
    if len(curve) < 2:
        return ""
    width, height, pad = 560, 160, 30
    logs = [math.log10(max(held, 1e-12)) for _, _, held in curve]
    low, high, last = min(logs), max(max(logs), min(logs) + 1e-6), curve[-1][0]
    points = " ".join(f"{pad + (width - 2 * pad) * row[0] / last:.1f},"
                      f"{pad + (height - 2 * pad) * (high - v) / (high - low):.1f}"
                      for row, v in zip(curve, logs, strict=True))
    return (f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' role='img' "
            f"aria-label='distillation loss'><polyline fill='none' stroke='#0969da' stroke-width='2' "
            f"points='{points}'/>"
            f"<text x='{pad}' y='16' font-size='11'>held-out distillation loss (log scale): {curve[0][2]:.4g} at "
            f"step {curve[0][0]} to {curve[-1][2]:.4g} at step {last}</text></svg>")
