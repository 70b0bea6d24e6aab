"""The edgeport command line. Heavy libraries (torch, onnx, runtimes) are imported inside the
commands that need them, so `edgeport --help` and `edgeport targets` answer at once."""

from __future__ import annotations

import dataclasses
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated

import typer

from common.errors import INTERNAL_ERROR_EXIT, PIP_PACKAGES, EdgeportError, MissingDependencyError, first_line
from exporter.builder.buildfile import DEFAULT_FILE as BUILD_FILE
from exporter.options import ExportOptions, help_of
from validators.diff import Thresholds

DIFF = Thresholds()  # `edgeport diff`'s defaults
app = typer.Typer(
    name="edgeport",
    help="Export a trained PyTorch model to the artifacts a device runs (ONNX, ...), validate each with its "
         "real runtime against the original on real data, and report parity, accuracy, latency and size "
         "against the target's budgets.\n\n"
         "Exit codes: 0 all budgets met; 1 an artifact failed a budget (or the verdict is provisional: "
         "parity on synthetic inputs only); 2 bad input, a missing converter or a conversion that could not be "
         "done; 3 an internal error (a bug in edgeport or a library: please report it).\n\n"
         "Start with: edgeport export --model demo:digits --target android",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None,
)

Debug = Annotated[bool, typer.Option("--debug", help="Show the full traceback on errors, and the converters' "
                                     "own output (silenced otherwise).")]
AllowSynthetic = Annotated[bool, typer.Option("--allow-synthetic-eval", help=help_of("allow_synthetic_eval"))]


def _progress(message: str) -> None:
    print(f"edgeport: {message}", file=sys.stderr, flush=True)


def _quiet_library_warnings() -> None:
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    # nn.LSTM re-assigns its flat weights while torch.export traces it: harmless, and not the user's to fix
    warnings.filterwarnings("ignore", message="The tensor attributes .* were assigned during export")
    for module in ("torch", "onnxruntime", "onnxscript", "onnx_ir", "copyreg"):
        warnings.filterwarnings("ignore", module=module)
    import logging

    # torchao logs its CUDA-only kernels failing to load on every CPU import, and torch's pytree a deprecation of
    # torchao's enums: neither is the user's to act on (--debug shows them)
    for name in ("torchao", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


class Terminated(BaseException):
    """SIGTERM (how CI cancels a job), raised where the program is so staging directories unwind."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def _guarded(debug: bool, action: Callable[[], int]) -> None:
    """Run a command; map errors to a one-line message and an exit code (traceback with --debug):
    2 for what the user can fix, 3 for a bug, 130/143 when interrupted or terminated, 141 when the reader of its
    output closed the pipe."""
    import signal

    import common.quiet

    common.quiet.SHOW_LIBRARY_OUTPUT = debug
    if not debug:
        _quiet_library_warnings()
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        code = action()
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in PIP_PACKAGES:
            _fail(debug, exc, "internal error", INTERNAL_ERROR_EXIT)
        _fail(debug, MissingDependencyError(exc), "error", 2)
    except EdgeportError as exc:
        _fail(debug, exc, "error", exc.exit_code)
    except BrokenPipeError:  # the reader stopped reading (`edgeport targets | head -1`): not an error of ours
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # nothing more to flush at exit
        raise typer.Exit(141) from None  # as a Unix tool killed by SIGPIPE
    except (KeyboardInterrupt, Terminated) as exc:
        what = "interrupted" if isinstance(exc, KeyboardInterrupt) else "terminated"
        print(f"edgeport: {what}; nothing was left half-written", file=sys.stderr)
        raise typer.Exit(130 if isinstance(exc, KeyboardInterrupt) else 143) from None
    except Exception as exc:  # a bug in edgeport or a library: still one line, its own exit code
        _fail(debug, exc, "internal error", INTERNAL_ERROR_EXIT)
    raise typer.Exit(code)


def _fail(debug: bool, exc: BaseException, kind: str, code: int) -> None:
    if debug:
        traceback.print_exc()
    if kind == "internal error":
        print(f"edgeport: internal error: {type(exc).__name__}: {first_line(exc)} (rerun with --debug and report it)",
              file=sys.stderr)
    else:
        print(f"edgeport: {kind}: {exc}", file=sys.stderr)
    raise typer.Exit(code) from None


def _print_summary(directory: Path, report: dict) -> None:
    from validators.judges import judge_for
    from validators.report import verdict_word
    from validators.validate import all_unjudged, all_violations

    judge = judge_for(report)
    rows = [list(judge.columns)] + [judge.summary_row(a) for a in report["artifacts"]]
    widths = [max(len(r[i]) for r in rows) for i in range(len(judge.columns))]
    for row in rows:
        print("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
    for line in all_violations(report):
        print(f"  violation: {line}")
    for line in all_unjudged(report):
        print(f"  not judged: {line}")
    if report.get("provisional"):
        print(f"  provisional: {report['provisional']}")
    verdict = {"FAILED": "FAILED (a budget was missed)", "PROVISIONAL": "PROVISIONAL (not judged on real data)"}
    print(f"{verdict.get(verdict_word(report), 'PASSED')}: {directory}/report.md")


@app.command()
def export(
    target: Annotated[str, typer.Option("--target", "-t", help=help_of("target"))],
    model: Annotated[str | None, typer.Option("--model", "-m", help=help_of("model"))] = None,
    out: Annotated[Path, typer.Option("--out", help=help_of("out"))] = Path("artifacts"),
    calib: Annotated[Path | None, typer.Option("--calib", help=help_of("calib"))] = None,
    eval_data: Annotated[Path | None, typer.Option("--eval", help=help_of("eval"))] = None,
    inputs: Annotated[list[str] | None, typer.Option("--input", help=help_of("inputs"))] = None,
    dynamic_batch: Annotated[bool, typer.Option("--dynamic-batch", help=help_of("dynamic_batch"))] = False,
    weights: Annotated[Path | None, typer.Option("--weights", help=help_of("weights"))] = None,
    trust_pickle: Annotated[bool, typer.Option("--trust-pickle", help=help_of("trust_pickle"))] = False,
    name: Annotated[str | None, typer.Option("--name", help=help_of("name"))] = None,
    auto_precision: Annotated[bool | None, typer.Option("--auto-precision/--no-auto-precision",
                                                        help=help_of("auto_precision"))] = None,
    output_kinds: Annotated[list[str] | None, typer.Option("--output-kind", help=help_of("output_kinds"))] = None,
    memory_limit: Annotated[float | None, typer.Option("--memory-limit", min=0.1,
                                                       help=help_of("memory_limit"))] = None,
    prune: Annotated[list[str] | None, typer.Option("--prune", help=help_of("prune"))] = None,
    allow_synthetic_eval: AllowSynthetic = False,
    debug: Debug = False,
) -> None:
    """Export, optimize, quantize and validate a model for one target."""

    def action() -> int:
        from exporter.pipeline import run_export

        options = ExportOptions(model=model, target=target, out=out, calib=calib, eval=eval_data, inputs=inputs,
                                dynamic_batch=dynamic_batch, weights=weights, trust_pickle=trust_pickle, name=name,
                                auto_precision=auto_precision, allow_synthetic_eval=allow_synthetic_eval,
                                output_kinds=output_kinds, memory_limit=memory_limit, prune=prune or [])
        directory, report = run_export(options, _progress)
        _print_summary(directory, report)
        return 0 if report["passed"] else 1

    _guarded(debug, action)


@app.command()
def validate(
    directory: Annotated[Path, typer.Argument(help="An artifact directory, e.g. artifacts/digits/android.")],
    allow_synthetic_eval: AllowSynthetic = False,
    debug: Debug = False,
) -> None:
    """Re-run parity, accuracy and latency from an artifact directory alone; exit 1 on a failed budget."""

    def action() -> int:
        from validators.report import write_reports
        from validators.validate import validate_directory

        report = validate_directory(directory, _progress, allow_synthetic_eval)
        write_reports(directory, report)
        _print_summary(directory, report)
        return 0 if report["passed"] else 1

    _guarded(debug, action)


@app.command()
def generate(
    directory: Annotated[Path, typer.Argument(help="A language-model artifact directory, e.g. "
                                              "artifacts/tinylm/android-llm.")],
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="The user's message (the model's chat template is "
                                        "applied when it has one).")],
    max_tokens: Annotated[int, typer.Option("--max-tokens", min=1, help="Stop after this many tokens (or at "
                                            "end-of-sequence, or when the KV cache is full).")] = 64,
    artifact: Annotated[str | None, typer.Option("--artifact", help="Which variant: its file name "
                                                 "(model.w4.mlpackage) or precision (the first artifact of that "
                                                 "precision; default: the first in the manifest).")] = None,
    debug: Debug = False,
) -> None:
    """Stream tokens from a shipped language-model artifact with its real runtime (greedy decoding)."""

    def action() -> int:
        from validators.lm.generate import generate as run

        run(directory, prompt, max_tokens, artifact, lambda piece: print(piece, end="", flush=True))
        print()
        return 0

    _guarded(debug, action)


@app.command()
def build(
    file: Annotated[Path, typer.Option("--file", "-f", help="The build file: models, and the targets each goes to "
                                       "(see examples/edgeport.toml).")] = Path(BUILD_FILE),
    out: Annotated[Path | None, typer.Option(help="Output root, over the build file's `out` (default: artifacts "
                                             "beside the build file); pairs go to OUT/<model>/<target>/.")] = None,
    jobs: Annotated[int, typer.Option("--jobs", "-j", min=1, help="Pairs exported at once, one process each. "
                                      "Above 1, reports say their latencies were measured beside other "
                                      "exports.")] = 1,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="Rebuild every pair, even when nothing it is made "
                                           "from changed.")] = False,
    targets: Annotated[list[str] | None, typer.Option("--target", "-t", help="Only pairs going to this target "
                                                      "(repeatable): one CI job per target.")] = None,
    models: Annotated[list[str] | None, typer.Option("--model", "-m", help="Only this model (its name; "
                                                     "repeatable).")] = None,
    junit: Annotated[Path | None, typer.Option(help="Write JUnit XML: one test case per (model, target, "
                                               "artifact), a failure per budget violation.")] = None,
    list_matrix: Annotated[bool, typer.Option("--list-matrix", help="Print the CI matrix as JSON, "
                                              "{\"target\": [...]}, for GitHub Actions' strategy.matrix, "
                                              "and build nothing.")] = False,
    debug: Debug = False,
) -> None:
    """Export every (model, target) pair of a build file, reusing pairs whose inputs did not change; exit with
    the worst pair's code (0 all passed, 1 a budget missed, 2 bad input, 3 internal error)."""

    def action() -> int:
        import json

        from exporter.builder.buildfile import load_build_file
        from exporter.builder.runner import run_build, summary_lines, worst_exit_code, write_junit

        build_file = load_build_file(file, out)
        if list_matrix:
            print(json.dumps(build_file.matrix()))
            return 0
        pairs = build_file.pairs(targets, models)
        _progress(f"building {len(pairs)} pair(s) from {file} into {build_file.out} ({jobs} at a time"
                  f"{'; cache off' if no_cache else ''})")
        results = run_build(build_file, pairs, jobs, not no_cache, _progress)
        for line in summary_lines(results):
            print(line)
        if junit is not None:
            write_junit(results, junit)
            print(f"wrote {junit}")
        return worst_exit_code(results)

    _guarded(debug, action)


@app.command()
def diff(
    old: Annotated[Path, typer.Argument(help="The earlier release: an artifact directory, or a build output root.")],
    new: Annotated[Path, typer.Argument(help="The later release, of the same kind.")],
    output_format: Annotated[str, typer.Option("--format", help="text, md (a pull-request comment) or json.")]
    = "text",
    max_sqnr_drop: Annotated[float, typer.Option(help="A regression: SQNR down by more than this many dB (below "
                                                 f"{DIFF.sqnr_noise_floor_db:g} dB; above it is rounding).")]
    = DIFF.max_sqnr_drop_db,
    max_accuracy_drop: Annotated[float, typer.Option(help="A regression: task accuracy (or top-1 agreement) "
                                                     "down by more than this fraction.")] = DIFF.max_accuracy_drop,
    max_latency_ratio: Annotated[float, typer.Option(help="A regression: median latency up by more than this "
                                                     f"ratio and {DIFF.min_latency_delta_ms:g} ms (host figures are "
                                                     "noisy). Latencies a --jobs build measured beside other "
                                                     "exports are not compared.")] = DIFF.max_latency_ratio,
    max_size_ratio: Annotated[float, typer.Option(help="A regression: bytes up by more than this ratio.")]
    = DIFF.max_size_ratio,
    debug: Debug = False,
) -> None:
    """What changed between two releases, per artifact: bytes, SQNR, cosine, accuracy, latency, per-layer
    SQNR. Identical artifacts are left out; exit 1 when any change is a regression beyond the thresholds."""

    def action() -> int:
        from exporter.errors import UserInputError
        from validators.diff import diff_releases, render

        if output_format not in ("text", "md", "json"):
            raise UserInputError(f"--format {output_format!r}: use text, md or json")
        limits = dataclasses.replace(DIFF, max_sqnr_drop_db=max_sqnr_drop, max_accuracy_drop=max_accuracy_drop,
                                     max_latency_ratio=max_latency_ratio, max_size_ratio=max_size_ratio)
        result = diff_releases(old, new, limits)
        print(render(result, output_format))
        return 1 if result.regressions else 0

    _guarded(debug, action)


@app.command("targets")
def list_targets(debug: Debug = False) -> None:
    """List the built-in targets with their formats, precisions and budgets."""

    def action() -> int:
        from exporter.kinds import model_kind
        from targets import builtin_target_names, load_target

        for target_name in builtin_target_names():
            t = load_target(target_name)
            print(f"{t.name}: {t.description}")
            for line in model_kind(t.kind).describe(t):
                print(line)
            if t.devices:
                print(f"  estimates for: {', '.join(t.devices)} (edgeport estimate DIR --device NAME)")
        print("\nYour own target: copy targets/android.toml, edit it, pass --target ./my.toml")
        return 0

    _guarded(debug, action)


@app.command()
def estimate(
    directory: Annotated[Path, typer.Argument(help="An artifact directory holding manifest.json.")],
    device: Annotated[list[str] | None, typer.Option("--device", help="A device profile: a name from devices/ or a "
                                                     ".toml file (repeat for several). Default: every built-in "
                                                     "device.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the estimates as JSON.")] = False,
    debug: Debug = False,
) -> None:
    """What a device will do with each artifact, estimated from the artifact itself (its bytes, its KV cache,
    its parameters) and the device's published figures: language-model decode and prefill tokens/s, time to
    first token and a peak-memory floor against the device's app limit; vela's figures on an Ethos-U. The
    effective bandwidth and throughput are fitted on published measurements (devices/calibration.toml); the
    held-out error is in the README. Estimates, never measurements."""

    def action() -> int:
        import json

        from devices import builtin_device_names, load_device
        from validators.estimate import estimate_directory, render

        devices = [load_device(name) for name in device or builtin_device_names()]
        rows = estimate_directory(directory, devices)
        print(json.dumps(rows, indent=1) if as_json else render(rows, devices))
        return 0

    _guarded(debug, action)


@app.command()
def report(
    directory: Annotated[Path, typer.Argument(help="An artifact directory holding report.json.")],
    debug: Debug = False,
) -> None:
    """Regenerate report.md and report.html from report.json."""

    def action() -> int:
        from validators.report import load_report, render

        data = load_report(directory)
        render(directory, data)
        print(f"wrote {directory}/report.md and {directory}/report.html")
        return 0

    _guarded(debug, action)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
