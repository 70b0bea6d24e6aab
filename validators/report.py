"""report.json (the contract CI reads), and report.md / report.html for people, from one dict."""

from __future__ import annotations

import html
import json
import math
from pathlib import Path

from common.errors import ArtifactError
from common.files import write_atomic, write_json
from validators.estimate import estimate_line
from validators.pruning_report import pruning_html, pruning_markdown
from validators.report_parts import violations_html

JSON, MARKDOWN, HTML = "report.json", "report.md", "report.html"


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}%"


def _num(value: float | None, digits: int = 3) -> str:
    return "–" if value is None else f"{value:.{digits}g}"


def _size(nbytes: int) -> str:
    return f"{nbytes / 1024:.1f} KiB" if nbytes < 1 << 20 else f"{nbytes / (1 << 20):.2f} MiB"


COLUMNS = ("artifact", "precision", "size", "max_abs", "SQNR dB", "cosine", "top-1 agree (decisive)", "accuracy",
           "drop", "latency p50 / p99 (host)", "verdict")


def _fixed(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _agreement(p: dict) -> str:
    """Top-1 agreement on the decisive samples, with how many of all samples those are."""
    if "top1_decisive_samples" not in p:
        return _pct(p["top1_agreement"])
    return f"{_pct(p['top1_agreement'])} ({p['top1_decisive_samples']}/{p['samples']})"


def artifact_row(a: dict) -> list[str]:
    p, acc, lat = a["parity"], a.get("accuracy"), a["latency_ms"]
    verdict = "pass" if a["budget"]["passed"] else "FAIL"
    if a["budget"]["passed"] and a["budget"].get("unjudged"):
        verdict = "pass (partly unjudged)"
    decision = a.get("auto_precision") or {}
    if decision and decision["int8_layers"] < decision["weighted_layers"] / 2:  # mostly float: said where it is judged
        verdict += f" ({a['precision']}: {decision['int8_layers']} of {decision['weighted_layers']} layers quantized)"
    return [
        a["path"], a["precision"], _size(a["bytes"]), _num(p["max_abs"]), _fixed(p["sqnr_db"], 1),
        _fixed(p["cosine"], 6), _agreement(p), _pct(acc["artifact"]) if acc else "–",
        f"{100 * acc['drop']:+.2f} pt" if acc else "–",
        f"{lat['median']:.3f} / {lat['p99']:.3f} ms",
        verdict,
    ]


def _data_lines(report: dict) -> list[str]:
    lines = []
    for role, info in report.get("data", {}).items():
        if not info:
            continue
        tag = " — SYNTHETIC inputs: parity is a smoke check, pass --eval real data" if info.get("synthetic") \
            else ""
        lines.append(f"{role}: {info['source']}, {info['samples']} samples, sha256 {info['sha256'][:12]}…{tag}")
    return lines


def _output_lines(report: dict) -> list[str]:
    """How each output was judged: its kind, why, and the metrics that kind is judged by."""
    from validators.parity import JUDGED_BY

    return [f"output {o['name']}: judged as {o['kind']} ({o.get('kind_basis', '')}) by "
            f"{', '.join(JUDGED_BY[o['kind']])}" for o in report.get("outputs", []) if o.get("kind") in JUDGED_BY]


def _transformer_line(record: dict) -> str:
    """A static int8 variant's transformer-block recipe (exporter/formats/transformer_blocks.py)."""
    return (f"transformer blocks: {record['norms']} norms, {record['residual_adds']} residual adds, "
            f"{record['attention_scores']} attention score paths and {record['down_projections']} down projections "
            f"kept float ({record['float_operators']} operators): {record['reason']}; {record['norms_smoothed']} norm "
            f"outputs smoothed: {record['smoothing']}")


def _pass_lines(a: dict) -> list[str]:
    conv = a.get("conversion", {})
    lines = [f"exporter: {conv.get('exporter', '?')} ({conv.get('reason', '')})"] if conv else []
    for p in conv.get("passes", []):
        lines.append(f"pass {p['pass']}: " + (f"{p['nodes_before']} -> {p['nodes_after']} nodes" if "nodes_before" in p
                                              else f"{p['rewrites']} rewrite(s)"))
    if a.get("quantization"):
        q = dict(a["quantization"])
        recurrent = q.pop("recurrent_layers", None)
        transformer = q.pop("transformer_blocks", None)
        lines.append("quantization: " + ", ".join(f"{k}={v}" for k, v in q.items()))
        if transformer:
            lines.append(_transformer_line(transformer))
        if recurrent:
            how = (f"{recurrent['fused_operators']} fused operators" if "fused_operators" in recurrent
                   else f"{recurrent['operators']} operators, unrolled")
            lines.append(f"recurrent layers ({how}): {recurrent['recipe']}, because {recurrent['reason']}")
    if a.get("delegation"):
        d = a["delegation"]
        lines.append(f"delegation: {d['delegated_operators']} operators in {d['delegate']}, {d['portable_operators']} "
                     f"on the portable kernels ({100 * d['delegated_op_coverage']:.1f}% delegated)")
        lines += [f"portable: {op['op']} ({op['module'] or 'no module'}): {op['reason']}"
                  for op in d["portable_fallback"]]
    if a.get("state"):
        state = a["state"]
        lines.append(f"state: {state['variable_tensors']} variable tensors; {state['reset_before_each_call']}")
    if "float_ops" in a:
        lines.append("integer-only check: " + (f"{len(a['float_ops'])} operator(s) compute in float"
                                               if a["float_ops"] else "every operator computes in integers"))
    if a.get("parity_runtime"):
        lines.append(f"parity measured by: {a['parity_runtime']}")
    if a.get("diagnosis_note") and not a.get("layers"):
        lines.append(f"diagnosis: {a['diagnosis_note']}")
    for runtime, p in list(a.get("parity_by_runtime", {}).items())[1:]:
        lines.append(f"parity on {runtime}: max_abs {_num(p['max_abs'])}, SQNR {_fixed(p['sqnr_db'], 1)} dB")
    for name, q in a.get("io_quantization", {}).items():
        lines.append(f"{name} is {q['dtype']}: real = (q - {q['zero_point']}) * {q['scale']:.9g}")
    for delegate, lat in a.get("latency_ms_by_delegate", {}).items():
        lines.append(f"latency with {delegate}: median {lat['median']:.3f} ms, p99 {lat['p99']:.3f} ms "
                     f"({lat['runtime']})")
    for estimate in a.get("estimates", []):
        lines.append(f"ESTIMATE on {estimate['device']} (not a measurement): " + estimate_line(estimate))
    if a.get("npu"):
        n = a["npu"]
        lines.append(f"NPU ({n['accelerator']}, {n['system_config']}; vela estimates): {n['npu_operators']} operators "
                     f"on the NPU, {n['cpu_operators']} on the CPU ({100 * n['npu_op_coverage']:.1f}% coverage), "
                     f"SRAM {n['sram_kib']:.2f} KiB, flash {n['flash_kib']:.2f} KiB, {n['macs']} MACs, "
                     f"{n['cycles']} cycles, {n['inference_ms_estimate']:.4f} ms estimated; compiled: {n['compiled']}")
        for op in n["cpu_fallback"]:
            lines.append(f"CPU fallback: {op['op']} ({op['output']})")
    return lines


TOP1_RULE = ("Top-1 agreement counts the decisive samples: those whose reference top-2 margin exceeds "
             "3·√2 times the per-logit noise the SQNR bound allows; a bound on a share of samples is judged only "
             "when one sample fits within its slack.")


LAYER_COLUMNS = ("module", "op", "SQNR at output, layer alone (dB)", "SQNR at layer, alone (dB)",
                 "SQNR at layer, accumulated (dB)")


def _layer_cells(row: dict) -> list[str]:
    return [row["module"] or row["node"], row["op"], f"{row['sqnr_db_alone_at_output']:.1f}",
            f"{row['sqnr_db_alone_at_layer']:.1f}", f"{row['sqnr_db_accumulated']:.1f}"]


def _auto_precision_line(a: dict) -> str:
    d = a["auto_precision"]
    verdict = "budget met" if d["met"] else d["note"]
    return (f"auto precision: kept {', '.join(d['kept_float'])} in float ({verdict}); "
            f"{d['int8_layers']}/{d['weighted_layers']} weighted layers stay quantized; "
            f"size {d['bytes_before']} -> {d['bytes_after']} bytes"
            + (f", host latency {d['latency_ms_before']:.4f} -> {d['latency_ms_after']:.4f} ms (measured by the export)"
               if "latency_ms_before" in d else "")
            + " (the blame table describes the fully quantized model; "
              "the artifact's figures above are after this change)")


def verdict_word(report: dict) -> str:
    """PASSED; FAILED when anything was missed; else PROVISIONAL (every figure in budget, but on synthetic
    eval inputs only)."""
    missed = report.get("violations") or any(a["budget"]["violations"] for a in report["artifacts"])
    return "PASSED" if report["passed"] else "FAILED" if missed or not report.get("provisional") else "PROVISIONAL"


def _artifact_facts(a: dict) -> list[str]:
    """What identifies an artifact and how it was judged: its hash, the runtime that ran it, the limits."""
    latency, limits = a["latency_ms"], (a.get("budget") or {}).get("limits") or {}
    facts = [f"sha256 {a['sha256']}",
             f"runtime: {latency['runtime']}, {latency['threads']} thread(s), {latency['runs']} timed runs"]
    if limits:
        facts.append("judged by: " + ", ".join(f"{k} {v:g}" if isinstance(v, int | float) else f"{k} {v}"
                                                for k, v in sorted(limits.items())))
    return facts


def to_markdown(report: dict) -> str:
    from validators.judges import judge_for

    return judge_for(report).to_markdown(report, verdict_word(report))


def tensor_markdown(report: dict, verdict: str) -> str:
    out = [f"# edgeport report: {report['model']['name']} → {report['target']}", "",
           f"**{verdict}** · model `{report['model']['source']}` · sha256 `{report['model']['sha256'][:16]}…`", ""]
    out += [f"- {line}" for line in _data_lines(report) + _output_lines(report)]
    if report.get("provisional"):
        out.append(f"- **provisional**: {report['provisional']}")
    if report.get("reference_accuracy") is not None:
        out.append(f"- PyTorch reference top-1 on the eval data: {_pct(report['reference_accuracy'])}")
    out += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(artifact_row(a)) + " |" for a in report["artifacts"]]
    out += ["", "Latency is measured on the build host (batch as traced), not on a device."]
    problems = list(report.get("violations", [])) + [
        f"`{a['path']}`: {v}" for a in report["artifacts"] for v in a["budget"]["violations"]]
    if problems:
        out += ["", "## Budget violations", ""] + [f"- {p}" for p in problems]
    unjudged = [f"`{a['path']}`: {n}" for a in report["artifacts"] for n in a["budget"].get("unjudged", [])]
    if unjudged:
        out += ["", "## Not judged (too few samples to resolve the bound; not counted as passed)", ""]
        out += [f"- {n}" for n in unjudged]
    out += ["", TOP1_RULE, "", "## Artifacts", ""]
    for a in report["artifacts"]:
        out += [f"### {a['path']}", ""]
        out += [f"- {line}" for line in [*_artifact_facts(a), *_pass_lines(a)]]
        out.append("")
    out += pruning_markdown(report)
    for a in report["artifacts"]:
        if not a.get("layers"):
            continue
        out += [f"## Per-layer blame: {a['path']} (worst first)", "",
                f"Each layer quantized (or weight-compressed) alone against the fp32 model, and the error "
                f"accumulated up to it, on "
                f"{a['layers'][0]['samples']} eval samples.", "",
                "| " + " | ".join(LAYER_COLUMNS) + " |", "|" + "---|" * len(LAYER_COLUMNS)]
        out += ["| " + " | ".join(_layer_cells(row)) + " |" for row in a["layers"]]
        if a.get("diagnosis_note"):
            out += ["", a["diagnosis_note"]]
        if a.get("auto_precision"):
            out += ["", _auto_precision_line(a)]
        out.append("")
    if report.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(out)


STYLE = """body{font:14px/1.45 system-ui,sans-serif;margin:2em;color:#1b1f24}
table{border-collapse:collapse;margin:1em 0}th,td{border:1px solid #d0d7de;padding:4px 8px;text-align:right}
th{background:#f6f8fa}td:first-child,th:first-child{text-align:left}.pass{color:#1a7f37;font-weight:600}
.fail{color:#cf222e;font-weight:600}.warn{color:#9a6700}code{background:#f6f8fa;padding:1px 4px}"""


def to_html(report: dict) -> str:
    from validators.judges import judge_for

    return judge_for(report).to_html(report, verdict_word(report), STYLE)


def tensor_html(report: dict, verdict: str, style: str) -> str:
    e = html.escape
    label = {"PASSED": "pass", "FAILED": "fail"}.get(verdict, "provisional")
    css = "warn" if label == "provisional" else label
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>edgeport: {e(report['model']['name'])} "
             f"→ {e(report['target'])}</title><style>{style}</style></head><body>",
             f"<h1>{e(report['model']['name'])} → {e(report['target'])} "
             f"<span class='{css}'>{label.upper()}</span></h1>",
             f"<p>model <code>{e(report['model']['source'])}</code>, sha256 "
             f"<code>{e(report['model']['sha256'][:16])}…</code></p><ul>"]
    provisional = [f"provisional: {report['provisional']}"] if report.get("provisional") else []
    for line in _data_lines(report) + _output_lines(report) + provisional:
        cls = " class='warn'" if "SYNTHETIC" in line or line.startswith("provisional") else ""
        parts.append(f"<li{cls}>{e(line)}</li>")
    if report.get("reference_accuracy") is not None:
        parts.append(f"<li>PyTorch reference top-1: {_pct(report['reference_accuracy'])}</li>")
    parts.append("</ul><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in COLUMNS) + "</tr>")
    for a in report["artifacts"]:
        row = artifact_row(a)
        cells = "".join(f"<td>{e(c)}</td>" for c in row[:-1])
        status = "pass" if a["budget"]["passed"] else "fail"
        parts.append(f"<tr>{cells}<td class='{status}'>{e(row[-1])}</td></tr>")
    parts.append("</table><p>Latency is measured on the build host, not on a device.</p>")
    parts.append(violations_html(report))
    unjudged = [f"{a['path']}: {n}" for a in report["artifacts"] for n in a["budget"].get("unjudged", [])]
    if unjudged:
        parts.append("<h2>Not judged</h2><ul>" + "".join(f"<li class='warn'>{e(n)}</li>" for n in unjudged)
                     + "</ul>")
    parts.append(f"<p>{e(TOP1_RULE)}</p>")
    parts.append(pruning_html(report))
    for a in report["artifacts"]:
        parts.append(f"<h3>{e(a['path'])}</h3><ul>"
                     + "".join(f"<li>{e(x)}</li>" for x in [*_artifact_facts(a), *_pass_lines(a)]) + "</ul>")
        if a.get("layers"):
            parts.append(_layer_chart(a))
    parts.append("</body></html>\n")
    return "".join(parts)


def _layer_chart(a: dict) -> str:
    """Per-layer SQNR as horizontal bars (inline SVG), worst layer first, plus the table. Each module name has a
    line of its own above its bars (real names are longer than any fixed column); the axis starts a little
    below the worst layer, not at 0 dB, so the layers that matter stand apart; the variant's min_sqnr_db is a
    dashed line."""
    e = html.escape
    rows = a["layers"]
    keys = (("sqnr_db_alone_at_output", "#cf222e"), ("sqnr_db_accumulated", "#0969da"))
    values = [row[key] for row in rows for key, _ in keys]
    budget = (a.get("budget") or {}).get("limits", {}).get("min_sqnr_db")
    low = 5 * math.floor((min([*values, *([budget] if budget is not None else [])]) - 5) / 5)
    high = max(low + 10.0, max(values) + 2, budget + 2 if budget is not None else low)
    bar_h, label_h, left, width = 14, 16, 24, 560

    def x(db: float) -> float:
        return left + width * (min(max(db, low), high) - low) / (high - low)

    step = label_h + 2 * bar_h + 10
    height = 24 + len(rows) * step
    svg = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{left + width + 70}' height='{height}' "
           "role='img' aria-label='per-layer SQNR'>"]
    for tick in range(int(low), int(high) + 1, 5 if high - low <= 60 else 10):
        svg.append(f"<line x1='{x(tick):.1f}' y1='14' x2='{x(tick):.1f}' y2='{height}' stroke='#eaeef2'/>"
                   f"<text x='{x(tick):.1f}' y='10' font-size='10' text-anchor='middle'>{tick} dB</text>")
    for i, row in enumerate(rows):
        y = 20 + i * step
        svg.append(f"<text x='{left}' y='{y + 12}' font-size='12'>{e(row['module'] or row['node'])}</text>")
        for j, (key, color) in enumerate(keys):
            top = y + label_h + j * bar_h
            end = x(row[key])
            svg.append(f"<rect x='{left}' y='{top}' width='{end - left:.1f}' height='{bar_h - 2}' fill='{color}'>"
                       f"<title>{e(key)}: {row[key]:.1f} dB</title></rect>"
                       f"<text x='{end + 4:.1f}' y='{top + bar_h - 3}' font-size='11'>{row[key]:.1f} dB</text>")
    if budget is not None:
        svg.append(f"<line x1='{x(budget):.1f}' y1='14' x2='{x(budget):.1f}' y2='{height}' stroke='#1b1f24' "
                   f"stroke-dasharray='4 3'><title>min_sqnr_db {budget:g}</title></line>")
    svg.append("</svg>")
    table = ("<table><tr>" + "".join(f"<th>{e(c)}</th>" for c in LAYER_COLUMNS) + "</tr>"
             + "".join("<tr>" + "".join(f"<td>{e(c)}</td>" for c in _layer_cells(r)) + "</tr>" for r in rows)
             + "</table>")
    legend = ("<p><span style='color:#cf222e'>■</span> SQNR at the model output with only this layer quantized "
              "&nbsp; <span style='color:#0969da'>■</span> SQNR at this layer, everything quantized"
              + (f" &nbsp; ┆ the variant's min_sqnr_db ({budget:g} dB)" if budget is not None else "")
              + f"; the axis starts at {low:g} dB</p>")
    extra = f"<p>{e(_auto_precision_line(a))}</p>" if a.get("auto_precision") else ""
    return f"<h4>Per-layer blame (worst first)</h4>{legend}{''.join(svg)}{table}{extra}"


def write_reports(directory: Path, report: dict) -> None:
    write_json(directory / JSON, report)
    render(directory, report)


def render(directory: Path, report: dict) -> None:
    write_atomic(directory / MARKDOWN, to_markdown(report))
    write_atomic(directory / HTML, to_html(report))


def load_report(directory: Path) -> dict:
    path = directory / JSON
    if not path.is_file():
        raise ArtifactError(f"{directory} has no {JSON}; run edgeport validate {directory} first")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc}); run edgeport validate {directory}") from None
