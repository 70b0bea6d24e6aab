"""`edgeport diff OLD NEW`: what changed between two releases, artifact by artifact.

OLD and NEW are artifact directories (manifest.json + report.json) or build output roots holding
<model>/<target>/ directories; artifacts are matched by model, target and file name. An artifact whose bytes
are the same in both (sha256) is left out. For the rest: the metrics both reports have (report.json's
kind-neutral block: bytes, SQNR, cosine, top-1 agreement, task accuracy, median latency, perplexity ratio, KL,
decode speed) and per-layer SQNR. A change past a threshold is a regression (exit 1). Host latency is noisy:
its threshold is a ratio.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from common.errors import ArtifactError


@dataclass(frozen=True)
class Thresholds:
    max_sqnr_drop_db: float = 1.0
    max_accuracy_drop: float = 0.005  # also top-1 agreement
    max_latency_ratio: float = 1.5
    max_size_ratio: float = 1.10
    max_ppl_ratio_increase: float = 0.01  # a language model's perplexity ratio to its reference
    # Below the noise of what is measured, a change is no regression: SQNR above this is float rounding (fp32
    # and fp16 artifacts move by dB between runs of a changed model), and host latency moves by tens of
    # microseconds on a tiny model whatever the release.
    sqnr_noise_floor_db: float = 60.0
    min_latency_delta_ms: float = 0.1


@dataclass
class ArtifactChange:
    pair: str  # model/target
    path: str
    status: str  # changed | added | removed
    figures: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)  # name -> (old, new)
    layers: list[tuple[str, float, float]] = field(default_factory=list)  # module, old SQNR, new SQNR
    regressions: list[str] = field(default_factory=list)
    verdict: tuple[bool | None, bool | None] = (None, None)  # passed, old and new


@dataclass
class DiffResult:
    old: Path
    new: Path
    changes: list[ArtifactChange]
    identical: int

    @property
    def regressions(self) -> list[str]:
        return [f"{c.pair}/{c.path}: {r}" for c in self.changes for r in c.regressions]


def _read(directory: Path) -> tuple[dict, dict]:
    try:
        manifest = json.loads((directory / "manifest.json").read_text(encoding="utf-8"))
        report = json.loads((directory / "report.json").read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ArtifactError(f"{directory} has no {Path(exc.filename).name}: not an exported artifact directory; "
                            "pass directories `edgeport export` or `edgeport build` wrote") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{directory}: a damaged manifest.json or report.json ({exc}); re-export it") from None
    if any("metrics" not in a for a in report.get("artifacts", [])):
        raise ArtifactError(f"{directory}/report.json predates the metrics block this diff compares; run "
                            f"`edgeport validate {directory}` to rewrite it, then diff again")
    return manifest, report


def _pairs(root: Path) -> dict[str, Path]:
    """pair name -> directory: the root itself when it is an artifact directory, else <model>/<target>/."""
    if not root.is_dir():
        raise ArtifactError(f"{root} is not a directory; pass an artifact directory or a build output root")
    if (root / "manifest.json").is_file():
        return {".": root}
    found = {d.parent.relative_to(root).as_posix(): d.parent for d in sorted(root.glob("*/*/manifest.json"))}
    if not found:
        raise ArtifactError(f"{root} holds no artifact directories (no */*/manifest.json); pass an artifact "
                            "directory or the output root of `edgeport build`")
    return found


def _identities(manifest: dict) -> dict[str, tuple[str, ...]]:
    """artifact path -> the sha256 of every file it is (a language model's graph and weights file, or one)."""
    return {entry["path"]: tuple(f["sha256"] for f in entry.get("files") or [entry])
            for entry in manifest.get("artifacts", [])}


def _on_disk(directory: Path | None, manifest: dict) -> dict[str, str]:
    """artifact path -> what is wrong with its files on disk (missing, or bytes that are not the manifest's):
    a release is what its files are, not what its manifest says they were."""
    from common.files import sha256_file

    problems: dict[str, str] = {}
    for entry in manifest.get("artifacts", []) if directory is not None else []:
        for file in entry.get("files") or [entry]:
            path = directory / file["path"]
            if not path.exists():
                problems[entry["path"]] = f"{file['path']} is missing on disk"
            elif sha256_file(path) != file["sha256"]:
                problems[entry["path"]] = f"{file['path']} differs from its manifest's sha256 (changed after export)"
            if entry["path"] in problems:
                break
    return problems


# the metrics (report.json's kind-neutral block, validators/metrics.py) a release is compared on
COMPARED = ("bytes", "sqnr_db", "cosine", "top1_agreement", "accuracy", "latency_ms", "ppl_ratio", "kl_mean",
            "decode_tokens_per_s")


def _figures(artifact: dict) -> dict[str, float]:
    metrics = artifact.get("metrics") or {}
    return {name: float(metrics[name]) for name in COMPARED if metrics.get(name) is not None}


def _layers(artifact: dict) -> dict[str, float]:
    rows = artifact.get("layers") or []  # per-layer SQNR rows; a language model's blame is KL, not compared here
    return {r["module"]: float(r["sqnr_db_accumulated"]) for r in rows
            if r.get("module") and r.get("sqnr_db_accumulated") is not None}


def _regressions(old: dict[str, float], new: dict[str, float], limits: Thresholds, contended: bool) -> list[str]:
    found = []

    def both(name: str) -> tuple[float, float] | None:
        return (old[name], new[name]) if name in old and name in new else None

    if (pair := both("bytes")) and pair[0] > 0 and pair[1] / pair[0] > limits.max_size_ratio:
        found.append(f"size {pair[0]:.0f} -> {pair[1]:.0f} bytes (x{pair[1] / pair[0]:.2f} > x{limits.max_size_ratio})")
    if (pair := both("sqnr_db")) and pair[0] - pair[1] > limits.max_sqnr_drop_db \
            and pair[1] < limits.sqnr_noise_floor_db:
        found.append(f"SQNR {pair[0]:.1f} -> {pair[1]:.1f} dB (down {pair[0] - pair[1]:.1f} > "
                     f"{limits.max_sqnr_drop_db} dB)")
    for name in ("accuracy", "top1_agreement"):
        if (pair := both(name)) and pair[0] - pair[1] > limits.max_accuracy_drop:
            found.append(f"{name.replace('_', ' ')} {pair[0]:.4f} -> {pair[1]:.4f} (down "
                         f"{pair[0] - pair[1]:.4f} > {limits.max_accuracy_drop})")
    if (pair := both("ppl_ratio")) and pair[1] - pair[0] > limits.max_ppl_ratio_increase:
        found.append(f"perplexity ratio {pair[0]:.4f} -> {pair[1]:.4f}")
    if not contended and (pair := both("latency_ms")) and pair[0] > 0 \
            and pair[1] / pair[0] > limits.max_latency_ratio and pair[1] - pair[0] > limits.min_latency_delta_ms:
        found.append(f"median latency {pair[0]:.4g} -> {pair[1]:.4g} ms (x{pair[1] / pair[0]:.2f} > "
                     f"x{limits.max_latency_ratio})")
    return found


def diff_releases(old_root: Path, new_root: Path, limits: Thresholds) -> DiffResult:
    old_pairs, new_pairs = _pairs(old_root), _pairs(new_root)
    changes: list[ArtifactChange] = []
    identical = 0
    for pair in list(dict.fromkeys([*old_pairs, *new_pairs])):
        old_manifest, old_report = _read(old_pairs[pair]) if pair in old_pairs else ({}, {"artifacts": []})
        new_manifest, new_report = _read(new_pairs[pair]) if pair in new_pairs else ({}, {"artifacts": []})
        old_bytes, new_bytes = _identities(old_manifest), _identities(new_manifest)
        damaged = {"old": _on_disk(old_pairs.get(pair), old_manifest),
                   "new": _on_disk(new_pairs.get(pair), new_manifest)}
        # latencies measured beside other exports (`edgeport build --jobs N`) are not compared
        contended = bool(old_report.get("latency_contended") or new_report.get("latency_contended"))
        olds = {a["path"]: a for a in old_report["artifacts"]}
        news = {a["path"]: a for a in new_report["artifacts"]}
        for path in list(dict.fromkeys([*olds, *news])):
            before, after = olds.get(path), news.get(path)
            problems = [f"{side} release: {damaged[side][path]}" for side in ("old", "new") if path in damaged[side]]
            if before and after and old_bytes.get(path) == new_bytes.get(path) is not None and not problems:
                identical += 1
                continue
            status = "changed" if before and after else ("added" if after else "removed")
            old_figures, new_figures = _figures(before or {}), _figures(after or {})
            change = ArtifactChange(pair, path, status, verdict=(
                before["budget"]["passed"] if before else None, after["budget"]["passed"] if after else None))
            for name in dict.fromkeys([*old_figures, *new_figures]):
                change.figures[name] = (old_figures.get(name), new_figures.get(name))
            old_layers, new_layers = _layers(before or {}), _layers(after or {})
            change.layers = [(m, old_layers[m], new_layers[m]) for m in old_layers
                             if m in new_layers and abs(old_layers[m] - new_layers[m]) >= 0.1]
            change.regressions = problems + _regressions(old_figures, new_figures, limits, contended)
            if status == "removed":
                change.regressions.append("the artifact is gone from the new release")
            if change.verdict == (True, False):
                change.regressions.append("its verdict went from pass to fail")
            changes.append(change)
    return DiffResult(old_root, new_root, changes, identical)


def _number(value: float | None, name: str) -> str:
    if value is None:
        return "-"
    if name == "bytes":
        return f"{value:,.0f}"
    if name in ("cosine",):
        return f"{value:.6f}"
    return f"{value:.4g}"


def _rows(change: ArtifactChange) -> list[str]:
    cells = []
    for name, (before, after) in change.figures.items():
        if _number(before, name) == _number(after, name):
            continue
        cells.append(f"{name} {_number(before, name)} -> {_number(after, name)}")
    return cells


def render(result: DiffResult, output_format: str) -> str:
    if output_format == "json":
        return json.dumps({"old": str(result.old), "new": str(result.new), "identical_artifacts": result.identical,
                           "regressions": result.regressions,
                           "changes": [{"pair": c.pair, "path": c.path, "status": c.status,
                                        "figures": {k: list(v) for k, v in c.figures.items()},
                                        "layers": [{"module": m, "old_sqnr_db": a, "new_sqnr_db": b}
                                                   for m, a, b in c.layers],
                                        "regressions": c.regressions} for c in result.changes]}, indent=2)
    verdict = (f"{len(result.regressions)} regression(s)" if result.regressions else "no regression")
    head = f"{len(result.changes)} artifact(s) changed, {result.identical} identical (left out); {verdict}"
    if output_format == "md":
        lines = [f"### edgeport diff: `{result.old}` -> `{result.new}`", "", head, ""]
        if result.changes:
            lines += ["| pair | artifact | status | what changed | regression |", "|---|---|---|---|---|"]
            for c in result.changes:
                what = "<br>".join(_rows(c) + [f"layer {m}: SQNR {a:.1f} -> {b:.1f} dB" for m, a, b in c.layers])
                flag = "<br>".join(f"**{r}**" for r in c.regressions) or "-"
                lines.append(f"| {c.pair} | `{c.path}` | {c.status} | {what or '-'} | {flag} |")
        return "\n".join(lines)
    lines = [head]
    for c in result.changes:
        lines.append(f"{c.pair}/{c.path}: {c.status}")
        lines += [f"  {cell}" for cell in _rows(c)]
        lines += [f"  layer {m}: SQNR {a:.1f} -> {b:.1f} dB" for m, a, b in c.layers]
        lines += [f"  REGRESSION: {r}" for r in c.regressions]
    return "\n".join(lines)
