"""Run a build: each pair not in the cache is one `edgeport export` process (at most --jobs at once), its
output in a log file; then a summary table, JUnit XML, and the exit code of the worst pair.

Every pair runs in a process of its own with --jobs 1 as well as with --jobs N, so both give the same
artifacts. Latency figures need a quiet machine: with --jobs above 1 each export is told so (an environment
variable) and its report says its latencies were measured beside other exports.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from xml.etree import ElementTree

from common.errors import EdgeportError
from common.files import write_atomic
from exporter.builder.buildfile import BuildFile, Pair
from exporter.builder.cache import cache_key, pair_material, reusable, write_record
from validators.latency import CONCURRENT_JOBS_ENV

LOGS = ".edgeport-build"  # under the output root: one log per pair
_RUNNING: set[subprocess.Popen] = set()  # exports under way: terminated (they unwind) when the build is
RESULT_WORDS = {0: "PASSED", 1: "FAILED", 2: "ERROR", 3: "INTERNAL ERROR"}


@dataclass
class PairResult:
    pair: Pair
    directory: Path
    exit_code: int
    seconds: float
    reused: bool
    log: Path | None
    message: str = ""  # the export's last line, for a pair that did not finish

    @property
    def word(self) -> str:
        return RESULT_WORDS.get(self.exit_code, f"EXIT {self.exit_code}")


def _last_line(log: Path) -> str:
    lines = [line for line in log.read_text(encoding="utf-8", errors="replace").splitlines() if line.strip()]
    return lines[-1].strip() if lines else ""


def _directory(build: BuildFile, pair: Pair, material: dict | None) -> Path:
    """Where `edgeport export` writes the pair (the target's own name, which a profile file may set)."""
    target = material["target"]["name"] if material else Path(pair.target).stem
    return build.out / pair.model.name / target


def _export(pair: Pair, build: BuildFile, jobs: int, key: str, material: dict | None) -> PairResult:
    directory = _directory(build, pair, material)
    log = build.out / LOGS / f"{pair.model.name}.{directory.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "exporter.cli", "export", *pair.model.export_args(),
               "--target", pair.target, "--out", str(build.out)]
    env = dict(os.environ)
    env.pop(CONCURRENT_JOBS_ENV, None)
    if jobs > 1:
        env[CONCURRENT_JOBS_ENV] = str(jobs)
    started = time.perf_counter()
    with open(log, "w", encoding="utf-8") as sink:
        process = subprocess.Popen(command, cwd=build.root, env=env, stdout=sink, stderr=subprocess.STDOUT)
        _RUNNING.add(process)
        try:
            code = process.wait()
        finally:
            _RUNNING.discard(process)
    seconds = time.perf_counter() - started
    if code in (0, 1) and material and (directory / "report.json").is_file():
        write_record(directory, key, material, code, seconds)
    return PairResult(pair, directory, code, seconds, False, log, "" if code in (0, 1) else _last_line(log))


def run_build(build: BuildFile, pairs: list[Pair], jobs: int, use_cache: bool, say) -> list[PairResult]:
    """say(line) prints one progress line. Results come back in the build file's order."""
    results: dict[int, PairResult] = {}
    todo: list[tuple[int, Pair, str, dict | None]] = []
    lock = threading.Lock()
    total = len(pairs)
    for index, pair in enumerate(pairs):
        try:
            material = pair_material(pair, build.root)
        except EdgeportError:  # a factory that cannot load: its export fails the pair, and says why in its log
            material = None
        key = cache_key(material) if material else ""
        directory = _directory(build, pair, material)
        record = reusable(directory, key) if use_cache and material else None
        if record is not None:
            results[index] = PairResult(pair, directory, record["exit_code"], 0.0, True, None)
            say(f"[{index + 1}/{total}] {pair.label}: {results[index].word}, reused (cache key {key[:12]}, "
                f"unchanged inputs): {directory}")
        else:
            todo.append((index, pair, key, material))

    def one(index: int, pair: Pair, key: str, material: dict | None) -> None:
        with lock:
            say(f"[{index + 1}/{total}] {pair.label}: exporting ...")
        result = _export(pair, build, jobs, key, material)
        with lock:
            results[index] = result
            tail = f" ({result.message})" if result.message else ""
            say(f"[{index + 1}/{total}] {pair.label}: {result.word} in {result.seconds:.1f} s{tail}; log {result.log}")

    if todo:
        pool = ThreadPoolExecutor(max_workers=max(1, jobs))  # threads that each wait on one process
        futures = [pool.submit(one, *item) for item in todo]
        try:
            for future in futures:
                future.result()
        except BaseException:  # interrupted or terminated: no export outlives the build
            for future in futures:
                future.cancel()
            for process in list(_RUNNING):
                process.terminate()
            raise
        finally:
            pool.shutdown(wait=True)
    return [results[i] for i in range(total)]


def worst_exit_code(results: list[PairResult]) -> int:
    return max((r.exit_code for r in results), default=0)


def _report(result: PairResult) -> dict | None:
    try:
        return json.loads((result.directory / "report.json").read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def summary_lines(results: list[PairResult]) -> list[str]:
    rows = [("model", "target", "result", "artifacts", "seconds", "build")]
    for r in results:
        report = _report(r) if r.exit_code in (0, 1) else None
        artifacts = str(len(report["artifacts"])) if report else "-"
        rows.append((r.pair.model.name, r.pair.target, r.word, artifacts, "-" if r.reused else f"{r.seconds:.1f}",
                     "reused" if r.reused else "built"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip() for row in rows]
    counts = {word: sum(r.word == word for r in results) for word in dict.fromkeys(r.word for r in results)}
    built = sum(not r.reused for r in results)
    lines.append(f"{len(results)} pair(s): " + ", ".join(f"{n} {w.lower()}" for w, n in counts.items())
                 + f"; {built} built, {len(results) - built} reused from the cache")
    return lines


def write_junit(results: list[PairResult], path: Path) -> None:
    """One test case per (model, target, artifact); each budget violation a <failure>, a pair that did not
    export an <error>, a provisional verdict a <failure> saying why."""
    suites = ElementTree.Element("testsuites", name="edgeport build")
    for r in results:
        suite = ElementTree.SubElement(suites, "testsuite", name=f"{r.pair.model.name}.{r.pair.target}")
        report = _report(r) if r.exit_code in (0, 1) else None
        cases: list[ElementTree.Element] = []
        if report is None:
            case = ElementTree.SubElement(suite, "testcase", classname=suite.get("name"), name="export",
                                          time=f"{r.seconds:.3f}")
            error = ElementTree.SubElement(case, "error", message=r.message or r.word, type=r.word)
            error.text = f"edgeport export exited {r.exit_code}; log: {r.log}"
            cases.append(case)
        else:
            shared = list(report.get("violations", [])) + ([report["provisional"]] if report.get("provisional") else [])
            seconds = ((report.get("export") or {}).get("artifact_seconds") or {})  # conversion time, as exported
            for artifact in report["artifacts"]:
                case = ElementTree.SubElement(suite, "testcase", classname=suite.get("name"), name=artifact["path"],
                                              time=f"{seconds.get(artifact['path'], 0.0):.3f}")
                for violation in shared + artifact["budget"]["violations"]:
                    failure = ElementTree.SubElement(case, "failure", message=violation, type="budget")
                    failure.text = f"{artifact['path']} ({artifact.get('precision', '')}): {violation}"
                if artifact["budget"].get("unjudged"):
                    ElementTree.SubElement(case, "system-out").text = "not judged: " + "; ".join(
                        artifact["budget"]["unjudged"])
                cases.append(case)
        suite.set("tests", str(len(cases)))
        suite.set("failures", str(sum(len(c.findall("failure")) > 0 for c in cases)))
        suite.set("errors", str(sum(len(c.findall("error")) > 0 for c in cases)))
    suites.set("tests", str(sum(int(s.get("tests")) for s in suites)))
    suites.set("failures", str(sum(int(s.get("failures")) for s in suites)))
    suites.set("errors", str(sum(int(s.get("errors")) for s in suites)))
    ElementTree.indent(suites)
    write_atomic(path, ElementTree.tostring(suites, encoding="unicode", xml_declaration=True) + "\n")
