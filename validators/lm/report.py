"""The language-model section of report.md / report.html: the token-level metrics per artifact, speed
beside eager PyTorch, blame, and each prompt's reference text beside each artifact's text."""

from __future__ import annotations

import html

from validators.estimate import estimate_line
from validators.lm.metrics import TIE_MARGIN, drift_text
from validators.pruning_report import pruning_html, pruning_markdown
from validators.report_parts import violations_html

COLUMNS = ("artifact", "built by", "size", "PPL ratio", "KL mean / p99", "same top-1", "greedy match",
           "decode agreement", "max Δlogit", "decode tok/s", "TTFT ms", "peak RSS", "verdict")


def _size(nbytes: int) -> str:
    return f"{nbytes / (1 << 20):.1f} MiB"


def _decode_agreement(runs: list[dict]) -> str:
    """The worst prompt's share of the reference's greedy tokens the artifact predicts when fed that text."""
    shares = [r["decode_top1_agreement"] for r in runs if "decode_top1_agreement" in r]
    return f"{min(shares):.0%} (worst prompt)" if shares else "-"


def summary_row(a: dict) -> list[str]:
    tf, speed = a["lm"]["teacher_forced"], a["lm"]["speed"]
    runs = a["lm"]["free_running"]
    matched = sum(r["matching_tokens"] for r in runs)
    total = sum(r["tokens"] for r in runs)
    return [a["path"], "genai builder" if "genai" in a["built_by"] else "export", _size(a["bytes"]),
            f"{tf['ppl_ratio']:.4f}", f"{tf['kl_mean']:.4f} / {tf['kl_p99']:.3f}", f"{100 * tf['top1_agreement']:.1f}%",
            f"{matched}/{total}", _decode_agreement(runs), f"{a['metrics']['max_abs']:.3g}",
            f"{speed['decode_tokens_per_s']:.1f}",
            f"{speed['ttft_ms']:.0f}", f"{speed['peak_rss_mb']:.0f} MB", "pass" if a["budget"]["passed"] else "FAIL"]


def _lines(report: dict) -> list[str]:
    data = report["data"]
    lines = [f"eval text: {data['eval']['source']} — {data['eval']['windows']} windows of "
             f"{data['eval']['window_length']} tokens ({data['eval']['positions']} next-token positions)",
             f"free-running: {data['prompts']} prompts, {data['new_tokens']} greedy tokens each"]
    if data["eval"].get("bos"):
        lines.append(f"eval windows: {data['eval']['bos']}")
    for bundle in (report.get("bundles") or {}).values():
        lines.append(f"{bundle['runtime']} bundle: {bundle['opens']}; a prompt is {bundle['prompt']}")
    if report["artifacts"]:
        tf = report["artifacts"][0]["lm"]["teacher_forced"]
        lines.append(f"reference (PyTorch) perplexity on the eval text: {tf['reference_ppl']:.3f}")
    if (log := report.get("export")) and "export_seconds" in log:
        steps = [f"trace {log['trace_seconds']} s"] + [f"{step} {seconds} s" for step, seconds in
                                                      (log.get("weight_plan_seconds") or {}).items()]
        steps += [f"{path} {seconds} s" for path, seconds in (log.get("artifact_seconds") or {}).items()]
        steps += [f"diagnosis of {path} {seconds} s" for path, seconds in
                  (log.get("diagnosis_seconds") or {}).items()]
        lines.append(f"export {log['export_seconds']} s before validation: {', '.join(steps)} (an artifact's "
                     "time includes its weight plan)")
    if (log := report.get("export")) and (memory := log.get("memory")):
        steps = ", ".join(f"{name} {mb / 1000:.2f}" for name, mb in memory["steps_mb"].items())
        preflight = memory.get("preflight") or {}
        estimate = (f"estimated before loading: about {preflight['needed_gb']} GB, at least "
                    f"{preflight['at_least_gb']} GB, with {preflight['available_gb']} GB available "
                    f"({preflight['available_from']})" if preflight.get("checked") else
                    f"not estimated before loading: {preflight.get('why', 'no preflight record')}")
        lines.append(f"export peak memory {memory['peak_rss_mb'] / 1000:.2f} GB resident on this host ({estimate}); "
                     f"per step (GB): {steps}" + ("" if memory["per_step"] else " (each the peak so far: the kernel "
                                                                                "refused the per-step reset)"))
    if report.get("eager"):
        e = report["eager"]
        lines.append(f"eager PyTorch, {e['threads']} thread(s): {e['decode_tokens_per_s']} decode tok/s, "
                     f"TTFT {e['ttft_ms']:.0f} ms for {e['prompt_tokens']} prompt tokens (host figures)")
    return lines


def _speedup(a: dict, report: dict) -> str:
    eager = report.get("eager")
    if not eager:
        return ""
    return f" ({a['lm']['speed']['decode_tokens_per_s'] / eager['decode_tokens_per_s']:.2f}x eager)"


def _artifact_lines(a: dict, report: dict) -> list[str]:
    tf, speed, q = a["lm"]["teacher_forced"], a["lm"]["speed"], a.get("quantization") or {}
    lines = [f"built by {a['built_by']}", f"perplexity {tf['artifact_ppl']:.3f} (reference {tf['reference_ppl']:.3f}),"
             f" KL mean {tf['kl_mean']:.4g}, p99 {tf['kl_p99']:.4g}, max {tf['kl_max']:.4g}",
             f"decode {speed['decode_tokens_per_s']} tok/s{_speedup(a, report)}, prefill "
             f"{speed['prefill_tokens_per_s']} tok/s, TTFT {speed['ttft_ms']:.0f} ms, peak RSS "
             f"{speed['peak_rss_mb']:.0f} MB, {speed['runtime']} (host)"]
    for estimate in a.get("estimates", []):
        lines.append(f"ESTIMATE on {estimate['device']} (not a measurement): {estimate_line(estimate)}"
                     + (f"; bandwidth {estimate['bandwidth']}" if "bandwidth" in estimate else ""))
    if q.get("decoder_linears_scheme"):
        table = q.get("embedding_bits", q.get("table_bits"))
        lines.append(f"weights: decoder linears {q['decoder_linears_scheme']} ({q.get('method')}), embedding table "
                     f"{table} bits" + (f", head {q['head_bits']} bits" if "head_bits" in q else "")
                     + (" (one table shared with the head)" if q.get("embedding_shares_head") else ""))
    if q.get("planned_by"):
        lines.append("weight plan: " + ", ".join(f"{n} by {m}" for m, n in q["planned_by"].items())
                     + (f"; {q['source_grid']}" if q.get("source_grid") else ""))
    if finer := q.get("source_precision"):
        held = ", ".join(f"{n} on {bits}-bit grids" for bits, n in finer["source_bits"].items())
        lines.append(f"source precision: {finer['kept_at_8_bits']} decoder linears kept at 8 bits, as the source "
                     f"stores them ({held})")
    if recovery := q.get("recovery"):
        lines.append(f"recovery: {recovery['steps']} steps of self-distillation ({recovery['seconds']} s) learned the "
                     f"block scales of {recovery['linears']} linears: KL on {recovery['held_out_tokens']} held-out "
                     f"calibration tokens {recovery['kl_before']:.4g} -> {recovery['kl_after']:.4g} (PyTorch, "
                     "weights only)")
    if "kv_cache_bytes" in a["metrics"]:
        lines.append(f"KV cache: {_size(a['metrics']['kv_cache_bytes'])} of K and V at the full cache length, held "
                     "beside the weights while it runs")
    if long := a["lm"].get("long_context"):
        lines.append(_long_line(long))
    if (bundle := a.get("bundle")) and bundle["greedy_equal"] is None:
        lines.append(f"NOT checked: {bundle['not_checked']}; its tokenizer file is checked")
    elif bundle:
        lines.append(f"{bundle['runtime']}, as an app calls it, generates the greedy text above "
                     + ("exactly" if bundle["greedy_equal"] else "DIFFERENTLY (see the violations)"))
    for run in a["lm"]["free_running"]:
        divergence = run["first_divergence"]
        where = "all equal" if divergence is None else f"first divergence at token {divergence}"
        if run.get("parted_at_tie"):
            where += (f", at a near tie, onto a text the float model itself generates with each token within "
                      f"{TIE_MARGIN} logits of its own choice")
        forced = (f"; fed the reference's text, predicts {run['decode_top1_agreement']:.0%} of its tokens (KL mean "
                  f"{run['decode_kl_mean']:.3g})" if "decode_top1_agreement" in run else "")
        lines.append(f"prompt {run['prompt']}: {run['matching_tokens']}/{run['tokens']} greedy tokens equal "
                     f"({where}), repeated 3-grams {run['artifact_repetition']:.0%} "
                     f"({'the float model on that path' if run.get('parted_at_tie') else 'reference'} "
                     f"{run['reference_repetition']:.0%}){forced}")
    auto = (a.get("diagnosis") or {}).get("auto_precision")
    if auto and "not_offered" in auto:
        lines.append(f"auto precision: {auto['not_offered']}")
    elif auto:
        lines.append(f"auto precision kept {len(auto['kept'])} decoder linear(s) at higher precision "
                     f"({', '.join(list(auto['kept'])[:6])}{'…' if len(auto['kept']) > 6 else ''}): KL mean "
                     f"{auto['kl_mean_before']:.4g} -> {auto['kl_mean_after']:.4g}, "
                     f"{_size(auto['bytes_before'])} -> {_size(auto['bytes_after'])}"
                     + ("" if auto["met_budget"] else "; the budget still fails at the limit of layers kept"))
    return lines


def _long_line(long: dict) -> str:
    """The long window's figures and its KL per eighth of the cache: a drift with position shows as a rising row."""
    curve = long["kl_by_position"]
    eighth = -(-long["tokens"] // 8)
    spans = [[k for p, k in curve if lo <= p < lo + eighth] for lo in range(0, long["tokens"], eighth)]
    by_span = ", ".join(f"{lo * eighth}-{(lo + 1) * eighth - 1}: {sum(ks) / len(ks):.3g}"
                        for lo, ks in enumerate(spans) if ks)
    onset = f"; {drift_text(long['drift'])}" if long["drift"] else ""
    return (f"long context ({long['tokens']}-token cache: prefill in chunks of {long['prefill_length']} to position "
            f"{long['decode_from']}, then decode to its end; {long['positions']} positions): PPL ratio "
            f"{long['ppl_ratio']:.4f}, KL mean {long['kl_mean']:.4g}, same top-1 {100 * long['top1_agreement']:.1f}%; "
            f"KL by position {by_span}{onset}")


def kl_curve_svg(artifacts: list[dict], width: int = 640, height: int = 160) -> str:
    """KL per position of the cache-long window, one line per artifact (log scale, 1e-6 .. the largest), as inline
    SVG: a drift with position is visible at a glance."""
    import math

    curves = [(a["path"], a["lm"]["long_context"]["kl_by_position"]) for a in artifacts
              if a["lm"].get("long_context")]
    if not curves:
        return ""
    last = max(p for _, curve in curves for p, _ in curve) or 1
    top = math.log10(max(1e-5, max(k for _, curve in curves for _, k in curve)))
    bottom = -6.0

    def y(kl: float) -> float:
        return height - 20 - (height - 30) * (max(math.log10(max(kl, 1e-6)), bottom) - bottom) / (top - bottom)

    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf")
    lines = [f"<polyline fill='none' stroke='{colours[i % len(colours)]}' stroke-width='1.2' points='"
             + " ".join(f"{40 + (width - 50) * p / last:.1f},{y(k):.1f}" for p, k in curve) + "'/>"
             for i, (_, curve) in enumerate(curves)]
    legend = [f"<text x='{45 + 150 * i}' y='12' font-size='11' fill='{colours[i % len(colours)]}'>"
              f"{html.escape(path)}</text>" for i, (path, _) in enumerate(curves)]
    axes = (f"<line x1='40' y1='{height - 20}' x2='{width - 10}' y2='{height - 20}' stroke='#888'/>"
            f"<text x='40' y='{height - 5}' font-size='10'>position 0</text>"
            f"<text x='{width - 90}' y='{height - 5}' font-size='10'>position {last}</text>"
            f"<text x='0' y='{y(10 ** top) + 4:.0f}' font-size='10'>{10 ** top:.2g}</text>"
            f"<text x='0' y='{height - 20}' font-size='10'>1e-6</text>")
    return (f"<h2>KL by position, cache-long window</h2><svg width='{width}' height='{height}' "
            f"xmlns='http://www.w3.org/2000/svg'>{axes}{''.join(lines)}{''.join(legend)}</svg>")


def estimates_svg(artifacts: list[dict], width: int = 640, height: int = 200) -> str:
    """Each variant's bytes against its ESTIMATED decode tokens/s, one colour per device, as inline SVG: which
    variant buys how much speed on the target's devices."""
    points = [(a["path"], a["bytes"], e["device"], e["decode_tokens_per_s"]) for a in artifacts
              for e in a.get("estimates", []) if e.get("decode_tokens_per_s")]
    if not points:
        return ""
    devices = list(dict.fromkeys(device for _, _, device, _ in points))
    most_bytes, fastest = max(p[1] for p in points), max(p[3] for p in points)
    colours = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd")

    def xy(nbytes: float, speed: float) -> tuple[float, float]:
        return 50 + (width - 70) * nbytes / most_bytes, height - 25 - (height - 45) * speed / fastest

    marks = []
    for path, nbytes, device, speed in points:
        x, y = xy(nbytes, speed)
        colour = colours[devices.index(device) % len(colours)]
        marks.append(f"<circle cx='{x:.1f}' cy='{y:.1f}' r='4' fill='{colour}'/><text x='{x + 6:.1f}' y='{y + 4:.1f}' "
                     f"font-size='10'>{html.escape(path)} {speed:g}</text>")
    legend = [f"<text x='{55 + 200 * i}' y='12' font-size='11' fill='{colours[i % len(colours)]}'>"
              f"{html.escape(device)} (estimate)</text>" for i, device in enumerate(devices)]
    axes = (f"<line x1='50' y1='{height - 25}' x2='{width - 10}' y2='{height - 25}' stroke='#888'/>"
            f"<line x1='50' y1='20' x2='50' y2='{height - 25}' stroke='#888'/>"
            f"<text x='50' y='{height - 8}' font-size='10'>0 MB</text>"
            f"<text x='{width - 90}' y='{height - 8}' font-size='10'>{most_bytes / 1e6:.0f} MB</text>"
            f"<text x='0' y='28' font-size='10'>{fastest:g} tok/s</text>")
    return (f"<h2>Bytes against estimated decode tokens/s (ESTIMATES on the target's devices)</h2><svg width='{width}' "
            f"height='{height}' xmlns='http://www.w3.org/2000/svg'>{axes}{''.join(marks)}{''.join(legend)}</svg>")


def to_markdown(report: dict, verdict: str) -> str:
    out = [f"# edgeport report: {report['model']['name']} → {report['target']} (language model)", "",
           f"**{verdict}** · model `{report['model']['source']}` · sha256 `{report['model']['sha256'][:16]}…`", ""]
    out += [f"- {line}" for line in _lines(report)]
    if report.get("provisional"):
        out.append(f"- **provisional**: {report['provisional']}")
    out += ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    out += ["| " + " | ".join(summary_row(a)) + " |" for a in report["artifacts"]]
    out += ["", "PPL, KL and same top-1 are llama.cpp's perplexity-tool definitions, teacher-forced on the eval "
                "text; greedy match counts tokens equal to the reference's before the first divergence; decode "
                "agreement is the share of the reference's greedy tokens the artifact predicts when fed that text "
                "one decode call at a time."]
    problems = list(report.get("violations", [])) + [
        f"`{a['path']}`: {v}" for a in report["artifacts"] for v in a["budget"]["violations"]]
    if problems:
        out += ["", "## Budget violations", ""] + [f"- {p}" for p in problems]
    out += ["", *pruning_markdown(report), "## What the model now says", ""]
    for row in report.get("texts", []):
        out += [f"**Prompt:** `{_one_line(row['prompt'])}`", "", f"- reference (PyTorch): {_quote(row['reference'])}"]
        out += [f"- `{path}`: {_quote(text)}" for path, text in row["artifacts"].items()]
        out.append("")
    out += ["## Artifacts", ""]
    for a in report["artifacts"]:
        out += [f"### {a['path']}", "", f"- sha256 `{a['sha256']}`"] + [f"- {x}" for x in _artifact_lines(a, report)]
        blame = (a.get("diagnosis") or {}).get("blame")
        if blame:
            out += ["", f"Per-layer blame ({a['diagnosis']['method']}; worst {min(10, len(blame))} of "
                        f"{a['diagnosis']['layers']}):", "", "| decoder linear | KL mean alone | PPL alone |",
                    "|---|---|---|"]
            out += [f"| {r['module']} | {r['kl_mean']:.4g} | {r['ppl']:.3f} |" for r in blame[:10]]
        out.append("")
    if report.get("notes"):
        out += ["## Notes", ""] + [f"- {n}" for n in report["notes"]] + [""]
    return "\n".join(out)


def _one_line(text: str) -> str:
    return text.replace("\n", "⏎").replace("`", "'")


def _quote(text: str) -> str:
    return "`" + _one_line(text) + "`"


def to_html(report: dict, verdict: str, style: str) -> str:
    e = html.escape
    css = {"PASSED": "pass", "FAILED": "fail"}.get(verdict, "warn")
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>edgeport: {e(report['model']['name'])} → "
             f"{e(report['target'])}</title><style>{style}\npre{{white-space:pre-wrap;margin:0}}</style></head><body>",
             f"<h1>{e(report['model']['name'])} → {e(report['target'])} <span class='{css}'>{verdict}</span></h1>",
             f"<p>language model <code>{e(report['model']['source'])}</code></p><ul>"]
    parts += [f"<li>{e(line)}</li>" for line in _lines(report)]
    if report.get("provisional"):
        parts.append(f"<li class='warn'>provisional: {e(report['provisional'])}</li>")
    parts.append("</ul><table><tr>" + "".join(f"<th>{e(c)}</th>" for c in COLUMNS) + "</tr>")
    for a in report["artifacts"]:
        row = summary_row(a)
        status = "pass" if a["budget"]["passed"] else "fail"
        parts.append("<tr>" + "".join(f"<td>{e(c)}</td>" for c in row[:-1])
                     + f"<td class='{status}'>{e(row[-1])}</td></tr>")
    parts.append("</table>")
    parts.append(violations_html(report))
    parts.append(kl_curve_svg(report["artifacts"]))
    parts.append(estimates_svg(report["artifacts"]))
    parts.append(pruning_html(report))
    parts.append("<h2>What the model now says</h2>")
    for row in report.get("texts", []):
        cells = [("reference (PyTorch)", row["reference"])] + list(row["artifacts"].items())
        parts.append(f"<p><b>Prompt:</b> <code>{e(_one_line(row['prompt']))}</code></p><table><tr>"
                     + "".join(f"<th>{e(name)}</th>" for name, _ in cells) + "</tr><tr>"
                     + "".join(f"<td style='text-align:left;vertical-align:top'><pre>{e(text)}</pre></td>"
                               for _, text in cells) + "</tr></table>")
    for a in report["artifacts"]:
        parts.append(f"<h3>{e(a['path'])}</h3><ul>" + "".join(f"<li>{e(x)}</li>" for x in _artifact_lines(a, report))
                     + "</ul>")
        blame = (a.get("diagnosis") or {}).get("blame")
        if blame:
            parts.append("<table><tr><th>decoder linear (blame, worst first)</th><th>KL alone</th><th>PPL alone</th>"
                         "</tr>" + "".join(f"<tr><td>{e(r['module'])}</td><td>{r['kl_mean']:.4g}</td>"
                                           f"<td>{r['ppl']:.3f}</td></tr>" for r in blame[:10]) + "</table>")
    parts.append("</body></html>\n")
    return "".join(parts)
