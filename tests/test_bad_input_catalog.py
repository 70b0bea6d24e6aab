"""Every command against damaged input: missing, empty, truncated, the wrong type, the wrong shape, NaN, zero
samples. Each ends with exit 2, one `edgeport: error` line that names the problem, no traceback and no library
log, and nothing written where the command would write. A new command joins by one row."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from tests.conftest import ZOO, run_cli

pytestmark = pytest.mark.slow


def _npz(**arrays) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        path = tmp / "data.npz"
        np.savez(path, **arrays)
        return path
    return write


def _bytes(name: str, data: bytes) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        path = tmp / name
        path.write_bytes(data)
        return path
    return write


def _truncated_npz(tmp: Path) -> Path:
    path = _npz(image=np.zeros((20, 1, 8, 8), np.float32))(tmp)
    path.write_bytes(path.read_bytes()[:300])
    return path


def _truncated_pt2(tmp: Path) -> Path:
    import torch

    program = torch.export.export(torch.nn.Linear(4, 3), (torch.randn(1, 4),))
    path = tmp / "model.pt2"
    torch.export.save(program, str(path))
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * 0.95)])  # the zip's directory survives
    return path


def _folder(files: dict[str, str | bytes]) -> Callable[[Path], Path]:
    def write(tmp: Path) -> Path:
        folder = tmp / "folder"
        folder.mkdir()
        for name, content in files.items():
            (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode())
        return folder
    return write


ENCODER = json.dumps({"model_type": "bert", "architectures": ["BertModel"]})
DECODER = json.dumps({"model_type": "llama", "architectures": ["LlamaForCausalLM"]})
TARGET_THREADS = 'name = "t"\n[runtime]\nthreads = 2.5\n[[variants]]\nformat = "onnx"\nprecision = "fp32"\n'
DIGITS = (10, 1, 8, 8)  # demo:digits' eval shape: 10 samples of 1x8x8
NAN = np.zeros(DIGITS, np.float32)
NAN[3, 0, 2, 2] = np.nan

# (id, command and arguments with {input} for the damaged file, how to make it, a fragment of the error line)
EXPORT = ["export", "--out", "{out}"]
CASES = [
    ("eval-missing", [*EXPORT, "--eval", "{tmp}/absent.npz"], None, "does not exist"),
    ("eval-empty-file", [*EXPORT, "--eval", "{input}"], _bytes("e.npz", b""), "cannot be read"),
    ("eval-truncated", [*EXPORT, "--eval", "{input}"], _truncated_npz, "cannot be read"),
    ("eval-folder-without-arrays", [*EXPORT, "--eval", "{input}"], _folder({"notes.txt": "x"}), "no .npy files"),
    ("eval-zero-samples", [*EXPORT, "--eval", "{input}"], _npz(image=np.zeros((0, 1, 8, 8), np.float32)),
     "holds no samples"),
    ("calib-zero-samples", [*EXPORT, "--calib", "{input}"], _npz(image=np.zeros((0, 1, 8, 8), np.float32)),
     "holds no samples"),
    ("eval-nan", [*EXPORT, "--eval", "{input}"], _npz(image=NAN), "'image' holds NaN or Inf at sample 3"),
    ("eval-wrong-shape", [*EXPORT, "--eval", "{input}"], _npz(image=np.zeros((10, 1, 7, 7), np.float32)),
     "has shape (10, 1, 7, 7)"),
    ("eval-wrong-dtype", [*EXPORT, "--eval", "{input}"], _npz(image=np.zeros(DIGITS, np.int64)),
     "convert it before saving"),
    ("eval-labels-out-of-range", [*EXPORT, "--eval", "{input}"],
     _npz(image=np.random.default_rng(0).random(DIGITS, np.float32) * 16, labels=np.full(10, 12)),
     "labels run 12..12, but output 'output' scores 10 classes"),
    ("eval-labels-2d", [*EXPORT, "--eval", "{input}"],
     _npz(image=np.zeros(DIGITS, np.float32), labels=np.zeros((10, 2), np.int64)), "1-D array"),
    ("out-is-a-file", ["export", "--out", "{input}"], _bytes("taken", b"x"), "is a file, not a folder"),
    ("model-missing", [*EXPORT, "--model", "{tmp}/absent.pt2"], None, "does not exist"),
    ("model-empty-pt2", [*EXPORT, "--model", "{input}"], _bytes("m.pt2", b""), "is not a PyTorch archive"),
    ("model-truncated-pt2", [*EXPORT, "--model", "{input}"], _truncated_pt2, "torch.export.load failed"),
    ("model-text-as-pt", [*EXPORT, "--model", "{input}"], _bytes("m.pt", b"hello"), "is not a PyTorch archive"),
    ("model-not-a-spec", [*EXPORT, "--model", "just-words"], None, "is not a model spec"),
    ("input-wrong-channels", [*EXPORT, "--model", f"{ZOO}:no_examples", "--input", "features:1x3:float32"], None,
     "cannot run on its example inputs (features 1x3 float32)"),
    ("input-malformed", [*EXPORT, "--model", f"{ZOO}:no_examples", "--input", "features=1x20"], None,
     "is not NAME:DIMS[:DTYPE]"),
    ("target-unknown", [*EXPORT, "--target", "pixel9"], None, "unknown target 'pixel9'"),
    ("target-threads-not-whole", [*EXPORT, "--target", "{input}"], _bytes("t.toml", TARGET_THREADS.encode()),
     "runtime.threads must be a whole number"),
    ("target-not-toml", [*EXPORT, "--target", "{input}"], _bytes("t.toml", b"name = [unclosed"), "t.toml"),
    ("hf-encoder-folder-android", [*EXPORT, "--model", "{input}"], _folder({"config.json": ENCODER}),
     "holds a BertModel (an encoder"),
    ("hf-encoder-folder-android-llm", [*EXPORT, "--target", "android-llm", "--model", "{input}"],
     _folder({"config.json": ENCODER}), "holds a BertModel (an encoder"),
    ("hf-folder-corrupt-safetensors", [*EXPORT, "--target", "android-llm", "--model", "{input}"],
     _folder({"config.json": DECODER, "model.safetensors": b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\":"}),
     "model.safetensors is not a readable safetensors file"),
    ("hf-folder-without-config", [*EXPORT, "--target", "android-llm", "--model", "hf:{input}"],
     _folder({"model.safetensors": b""}), "has no config.json"),
    ("lm-eval-missing", [*EXPORT, "--target", "android-llm", "--eval", "{tmp}/absent.txt"], None, "does not exist"),
    ("lm-eval-not-text", [*EXPORT, "--target", "android-llm", "--eval", "{input}"], _bytes("e.txt", b"\xff\xfe\x00"),
     "is not UTF-8 text"),
    ("lm-calib-given", [*EXPORT, "--target", "cockpit-llm", "--calib", "{input}"], _bytes("c.txt", b"text"),
     "calibrate nothing"),
    *[(f"lm-{flag[2:]}-given", [*EXPORT, "--target", "android-llm", flag, *value], None,
       f"{flag} (build-file key {flag[2:].replace('-', '_')}) does nothing for the language-model target")
      for flag, value in [("--weights", ["{tmp}/w.pt"]), ("--input", ["x:1x8:float32"]), ("--dynamic-batch", []),
                          ("--output-kind", ["logits:classification"]), ("--allow-synthetic-eval", [])]],
    ("validate-missing", ["validate", "{tmp}/absent"], None, "is not a directory"),
    ("validate-a-file", ["validate", "{input}"], _bytes("f", b"x"), "is not a directory"),
    ("validate-no-manifest", ["validate", "{input}"], _folder({"notes.txt": "x"}), "has no manifest.json"),
    ("validate-damaged-manifest", ["validate", "{input}"], _folder({"manifest.json": "{"}), "is not valid JSON"),
    ("validate-manifest-missing-keys", ["validate", "{input}"], _folder({"manifest.json": "{}"}), "lacks"),
    ("diff-old-missing", ["diff", "{tmp}/absent", "{tmp}"], None, "is not a directory"),
    ("diff-no-artifacts", ["diff", "{input}", "{input}"], _folder({"notes.txt": "x"}), "holds no artifact"),
    ("diff-damaged-manifest", ["diff", "{input}", "{input}"], _folder({"manifest.json": "{", "report.json": "{}"}),
     "a damaged manifest.json or report.json"),
    ("report-missing", ["report", "{tmp}/absent"], None, "absent"),
    ("report-no-report-json", ["report", "{input}"], _folder({"notes.txt": "x"}), "report.json"),
    ("report-damaged-report-json", ["report", "{input}"], _folder({"report.json": "{"}), "report.json"),
    ("build-file-missing", ["build", "--file", "{tmp}/absent.toml"], None, "absent.toml"),
    ("build-file-not-toml", ["build", "--file", "{input}"], _bytes("b.toml", b"[[models]\n"), "b.toml"),
    ("build-file-unknown-key", ["build", "--file", "{input}"], _bytes("b.toml", b"colour = 'red'\n"), "colour"),
    ("generate-missing", ["generate", "{tmp}/absent", "--prompt", "hi"], None, "is not a directory"),
    ("generate-no-manifest", ["generate", "{input}", "--prompt", "hi"], _folder({"notes.txt": "x"}),
     "has no manifest.json"),
    ("estimate-missing", ["estimate", "{tmp}/absent"], None, "is not a directory"),
    ("estimate-no-manifest", ["estimate", "{input}"], _folder({"notes.txt": "x"}), "has no manifest.json"),
    ("estimate-unknown-device", ["estimate", "{tmp}", "--device", "pixel9"], None, "unknown device 'pixel9'"),
    ("estimate-device-not-toml", ["estimate", "{tmp}", "--device", "{input}"], _bytes("d.toml", b"name = [unclosed"),
     "d.toml: not a device profile"),
    ("target-unknown-device", [*EXPORT, "--target", "{input}"],
     _bytes("t.toml", TARGET_THREADS.replace("threads = 2.5", "threads = 1").replace(
         '[runtime]', 'devices = ["pixel9"]\n[runtime]').encode()), "unknown device 'pixel9'"),
]


@pytest.mark.parametrize(("args", "make", "fragment"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_every_command_refuses_damaged_input_cleanly(tmp_path, args, make, fragment):
    damaged = make(tmp_path) if make else None
    out = tmp_path / "out"
    values = {"tmp": tmp_path, "out": out, "input": damaged}
    if args[0] == "export" and "--target" not in args:
        args = [*args, "--target", "android"]
    result = run_cli(*(a.format(**values) for a in args), cwd=tmp_path)
    assert result.code == 2, (result.stdout, result.stderr)
    assert len(result.error_lines) == 1, result.stderr
    assert fragment.format(**values) in result.error_lines[0], result.error_lines[0]
    assert "Traceback" not in result.stderr
    assert all(line.startswith("edgeport: ") for line in result.stderr.splitlines() if line.strip()), result.stderr
    assert not out.exists()  # nothing created, not even the folder


def test_targets_refuses_an_unknown_option():
    result = run_cli("targets", "--colour")
    assert result.code == 2 and "Traceback" not in result.stderr and "--colour" in result.stderr


API_CASES = [
    ("no-model", lambda e, t: e.export(None, out=t / "out"), "got no model"),
    ("eval-a-bare-array", lambda e, t: e.export("demo:digits", eval=np.zeros((2, 1, 8, 8)), out=t / "out"),
     "eval= takes a path"),
    ("calib-a-list", lambda e, t: e.export("demo:digits", calib=[1, 2], out=t / "out"), "calib= takes a path"),
    ("unknown-target", lambda e, t: e.export("demo:digits", target="pixel9", out=t / "out"), "unknown target"),
    ("validate-missing", lambda e, t: e.validate(t / "absent"), "is not a directory"),
]


@pytest.mark.parametrize(("call", "fragment"), [c[1:] for c in API_CASES], ids=[c[0] for c in API_CASES])
def test_the_python_api_raises_edgeport_error_naming_the_problem(tmp_path, call, fragment):
    import edgeport

    with pytest.raises(edgeport.EdgeportError, match=fragment) as raised:
        call(edgeport, tmp_path)
    assert raised.value.exit_code == 2
    assert not (tmp_path / "out").exists()


def test_a_report_names_the_artifacts_it_has():
    from edgeport.api import Report

    report = Report(directory=Path("."), passed=True, target="android", model={}, artifacts=[], json={})
    with pytest.raises(KeyError, match="no onnx/int8 artifact in this report; it has none"):
        report.artifact("onnx", "int8")


def test_the_catalog_covers_every_command():
    commands = {args[0] for _, args, _, _ in CASES} | {"targets"}
    assert commands >= {"export", "validate", "diff", "report", "build", "generate", "targets", "estimate"}
    assert len(CASES) + 1 + len(API_CASES) + 1 >= 40


@pytest.mark.parametrize(("patch", "fragment"), [
    ("disk_usage", "only 10 MiB free"), ("access", r"is not writable \(read-only file system or no permission\)")])
def test_an_output_place_without_room_or_write_access_is_refused_first(tmp_path, monkeypatch, patch, fragment):
    """A full disk or a read-only file system fails before loading the model, naming the folder."""
    from collections import namedtuple

    import edgeport
    from exporter import staging

    if patch == "disk_usage":
        usage = namedtuple("usage", "total used free")
        monkeypatch.setattr(staging.shutil, "disk_usage", lambda _: usage(1 << 40, 1 << 40, 10 << 20))
    else:
        monkeypatch.setattr(staging.os, "access", lambda *_: False)
    loaded = []
    monkeypatch.setattr("exporter.kinds.tensor.export._load", lambda *a: loaded.append(a))
    with pytest.raises(edgeport.EdgeportError, match=fragment):
        edgeport.export("demo:digits", out=tmp_path / "out", progress=None)
    assert not loaded and not (tmp_path / "out").exists()
