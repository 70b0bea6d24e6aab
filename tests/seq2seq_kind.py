"""A third model kind written outside the product: a tiny encoder-decoder whose program is two methods,
`encode` (source tokens -> memory) and `decode_step` (memory, state, token -> logits, state), exported to
ONNX (one graph per method) and ExecuTorch (one .pte, both methods) and judged by greedy decoding against
PyTorch. It plugs into the product through its three registries only (exporter.kinds, validators.judges,
targets.profile's target readers): `install()` registers it, and nothing of the product names it."""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

KIND_NAME = "seq2seq"
SPEC = "demo:seq2seq"
VOCAB, HIDDEN, SOURCE, STEPS, START = 24, 16, 6, 8, 1
FORMATS = ("onnx", "executorch")
METHODS = ("encode", "decode_step")


@dataclass(frozen=True)
class Seq2SeqVariant:
    format: str
    precision: str
    max_abs: float = 1e-4  # largest |logit difference| over every greedy step

    @property
    def filename(self) -> str:
        from targets.catalog import artifact_filename

        return artifact_filename(self.format, self.precision)


@dataclass(frozen=True)
class Seq2SeqTarget:
    kind = KIND_NAME
    name: str
    description: str
    variants: tuple[Seq2SeqVariant, ...]
    auto_precision: bool = False
    origin: str = ""

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v.format for v in self.variants))

    def to_profile(self) -> dict:
        return {"name": self.name, "variants": [{"format": v.format, "precision": v.precision, "max_abs": v.max_abs}
                                                for v in self.variants]}


def read_target(data: dict, origin: str) -> Seq2SeqTarget:
    from targets import TargetError

    variants = []
    for entry in data.get("variants", []):
        if entry.get("format") not in FORMATS or entry.get("precision") != "fp32":
            raise TargetError(f"{origin}: a seq2seq variant is onnx or executorch, fp32")
        variants.append(Seq2SeqVariant(entry["format"], "fp32", float(entry.get("max_abs", 1e-4))))
    return Seq2SeqTarget(data["name"], data.get("description", ""), tuple(variants), origin=origin)


def _model(seed: int = 0):
    import torch

    class TinySeq2Seq(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = torch.nn.Embedding(VOCAB, HIDDEN)
            self.encoder = torch.nn.Linear(HIDDEN, HIDDEN)
            self.state = torch.nn.Linear(HIDDEN, HIDDEN)
            self.memory = torch.nn.Linear(HIDDEN, HIDDEN)
            self.head = torch.nn.Linear(HIDDEN, VOCAB)

        def encode(self, source):
            return torch.tanh(self.encoder(self.embed(source)).mean(dim=1))

        def decode_step(self, memory, state, token):
            state = torch.tanh(self.state(state) + self.memory(memory) + self.embed(token))
            return self.head(state), state

    torch.manual_seed(seed)
    return TinySeq2Seq().eval()


def _method(model, name: str):
    import torch

    class Method(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, *args):
            return getattr(self.model, name)(*args)

    return Method()


def _examples():
    import torch

    memory = torch.zeros(1, HIDDEN)
    return {"encode": (torch.zeros(1, SOURCE, dtype=torch.long),),
            "decode_step": (memory, torch.zeros(1, HIDDEN), torch.zeros(1, dtype=torch.long))}


Run = Callable[[str, list[np.ndarray]], list[np.ndarray]]  # (method, inputs) -> outputs


def greedy(run: Run, source: np.ndarray) -> tuple[list[int], np.ndarray]:
    """Greedy decoding through any runtime's two methods: run(method, inputs) -> outputs."""
    (memory,) = run("encode", [source])
    state, token, tokens, logits = np.zeros((1, HIDDEN), np.float32), START, [], []
    for _ in range(STEPS):
        step_logits, state = run("decode_step", [memory, state, np.array([token], np.int64)])
        token = int(step_logits[0].argmax())
        tokens.append(token)
        logits.append(step_logits[0])
    return tokens, np.stack(logits)


class Seq2SeqKind:
    name = KIND_NAME
    default_model = SPEC
    sources = "a tiny encoder-decoder"
    targets = "an encoder-decoder target"

    def claims(self, spec: Any) -> bool:
        return spec == SPEC

    def describe(self, target: Seq2SeqTarget) -> list[str]:
        return [f"  {v.format:5} {v.precision:13} {v.filename}" for v in target.variants]

    def prepare(self, options: Any, target: Seq2SeqTarget, progress: Callable[[str], None]) -> Seq2SeqExport:
        return Seq2SeqExport(target)


class Seq2SeqExport:
    """The model and PyTorch's greedy decoding of three sources, before anything is written."""

    name = "seq2seq"
    libraries = ()

    def __init__(self, target: Seq2SeqTarget) -> None:
        import torch

        self.target, self.torch_model = target, _model()
        self.model = {"name": "seq2seq", "source": SPEC, "sha256": hashlib_of(self.torch_model)}
        sources = np.random.default_rng(0).integers(2, VOCAB, (3, 1, SOURCE)).astype(np.int64)
        with torch.no_grad():
            def eager(method, inputs):
                return [t.numpy() for t in _as_tuple(getattr(self.torch_model, method)(*map(torch.from_numpy, inputs)))]

            decoded = [greedy(eager, s) for s in sources]
        self.reference = {"sources": sources, "tokens": np.array([t for t, _ in decoded]),
                          "logits": np.stack([logits for _, logits in decoded])}

    def write(self, work: Path, progress: Callable[[str], None]):
        from common.files import save_npz, sha256_file, size_bytes
        from exporter.artifacts import provenance
        from exporter.formats import backend
        from exporter.kinds import Written

        entries = []
        for variant in self.target.variants:
            progress(f"{variant.format}: exporting encode and decode_step")
            files = _lower(self.torch_model, variant, work)
            stamp = provenance("seq2seq", self.model["sha256"], self.target.name, variant.precision)
            files += [extra for f in dict.fromkeys(files[:2]) for extra in backend(variant.format).stamp(f, stamp)]
            described = [{"path": f.name, "bytes": size_bytes(f), "sha256": sha256_file(f)}
                         for f in dict.fromkeys(files)]
            entries.append({"format": variant.format, "precision": variant.precision, "path": files[0].name,
                            "methods": {m: f.name for m, f in zip(METHODS, files[:2], strict=True)},
                            "files": described, "bytes": sum(d["bytes"] for d in described),
                            "sha256": described[0]["sha256"],
                            "budget": {"max_abs": variant.max_abs, "min_top1_agreement": 1.0}})
        save_npz(work / "reference.npz", self.reference)
        return Written(entries, {}, {"path": "reference.npz"}, {})


def hashlib_of(model) -> str:
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode() + tensor.numpy().tobytes())
    return digest.hexdigest()


def _as_tuple(value):
    return value if isinstance(value, tuple) else (value,)


def _lower(model, variant: Seq2SeqVariant, work: Path) -> list[Path]:
    """The artifact's file per method (ONNX: a graph each; ExecuTorch: one program holding both)."""
    import torch

    examples = _examples()
    if variant.format == "onnx":
        paths = [work / f"model.{variant.precision}.{method}.onnx" for method in METHODS]
        for method, path in zip(METHODS, paths, strict=True):
            torch.onnx.export(_method(model, method), examples[method], str(path), dynamo=True, verbose=False)
        return paths
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    programs = {m: torch.export.export(_method(model, m), examples[m]) for m in METHODS}
    out = work / variant.filename
    out.write_bytes(to_edge_transform_and_lower(programs, partitioner=[XnnpackPartitioner()]).to_executorch().buffer)
    return [out, out]


def _runner(directory: Path, entry: dict) -> tuple[Callable, str]:
    if entry["format"] == "onnx":
        import onnxruntime

        sessions = {m: onnxruntime.InferenceSession(str(directory / f), providers=["CPUExecutionProvider"])
                    for m, f in entry["methods"].items()}

        def run(method, inputs):
            session = sessions[method]
            return session.run(None, {i.name: x for i, x in zip(session.get_inputs(), inputs, strict=True)})

        return run, "onnxruntime"
    import torch
    from executorch.runtime import Runtime

    program = Runtime.get().load_program(directory / entry["path"])
    methods = {m: program.load_method(m) for m in METHODS}

    def run(method, inputs):
        return [t.numpy() for t in methods[method].execute([torch.from_numpy(x) for x in inputs])]

    return run, "executorch"


class Seq2SeqJudge:
    name = KIND_NAME
    manifest_keys = ("reference",)
    columns = ("artifact", "methods", "size", "max Δlogit", "same tokens", "step ms", "verdict")

    def summary_row(self, a: dict) -> list[str]:
        return [a["path"], ", ".join(a["methods"]), f"{a['bytes']} B", f"{a['metrics']['max_abs']:.2e}",
                f"{a['metrics']['top1_agreement']:.0%}", f"{a['metrics']['latency_ms']:.3f}",
                "pass" if a["budget"]["passed"] else "FAIL"]

    def validate(self, directory: Path, progress: Callable[[str], None], allow_synthetic_eval: bool) -> dict:
        from common.artifact_dir import read_manifest
        from common.files import load_npz, sha256_file
        from validators.budgets import check
        from validators.metrics import metrics_block

        manifest = read_manifest(directory)
        reference = load_npz(directory / manifest["reference"]["path"])
        results = []
        for entry in manifest["artifacts"]:
            progress(f"validating {entry['path']}: greedy decoding through encode and decode_step")
            problems = [f"{f['path']} differs from the manifest's sha256" for f in entry["files"]
                        if sha256_file(directory / f["path"]) != f["sha256"]]
            run, runtime = _runner(directory, entry)
            max_abs, same, steps = 0.0, 0, []
            for source, tokens, logits in zip(reference["sources"], reference["tokens"], reference["logits"],
                                              strict=True):
                begun = time.perf_counter()
                got_tokens, got_logits = greedy(run, source)
                steps.append((time.perf_counter() - begun) * 1000 / STEPS)
                max_abs = max(max_abs, float(np.abs(got_logits - logits).max()))
                same += sum(int(a == b) for a, b in zip(got_tokens, tokens, strict=True))
            metrics = metrics_block(bytes=entry["bytes"], max_abs=max_abs,
                                    top1_agreement=same / reference["tokens"].size, latency_ms=float(np.median(steps)))
            problems += check(entry["budget"], metrics, {"max_abs": "max |Δlogit| over every greedy step",
                                                         "top1_agreement": "greedy tokens equal to PyTorch's"})
            results.append({"format": entry["format"], "precision": entry["precision"], "path": entry["path"],
                            "methods": entry["methods"], "bytes": entry["bytes"], "sha256": entry["sha256"],
                            "runtime": runtime, "metrics": metrics,
                            "seq2seq": {"tokens": int(reference["tokens"].size), "latency": "per decode step"},
                            "budget": {"passed": not problems, "violations": problems,
                                       "limits": entry["budget"]}})
        return {"kind": manifest["kind"], "model": manifest["model"], "target": manifest["target"]["name"],
                "passed": all(r["budget"]["passed"] for r in results), "provisional": "", "violations": [],
                "artifacts": results}

    def to_markdown(self, report: dict, verdict: str) -> str:
        rows = ["| " + " | ".join(self.summary_row(a)) + " |" for a in report["artifacts"]]
        return "\n".join([f"# seq2seq report: {report['target']}", "", f"**{verdict}**", "",
                          "| " + " | ".join(self.columns) + " |", "|" + "---|" * len(self.columns), *rows, ""])

    def to_html(self, report: dict, verdict: str, style: str) -> str:
        return (f"<!doctype html><html><head><style>{style}</style></head><body><h1>{verdict}</h1><pre>"
                f"{json.dumps(report['artifacts'], indent=1)}</pre></body></html>")


KIND = Seq2SeqKind()
JUDGE = Seq2SeqJudge()


def install() -> None:
    """Register the kind, its judge and its target reader: the only way it reaches the product."""
    from exporter.kinds import register as register_kind
    from targets.profile import register_target_kind
    from validators.judges import register as register_judge

    register_kind(KIND_NAME, __name__)
    register_judge(KIND_NAME, __name__)
    register_target_kind(KIND_NAME, read_target)


def target_file(path: Path) -> Path:
    path.write_text(f'kind = "{KIND_NAME}"\nname = "seq2seq-test"\n'
                    '[[variants]]\nformat = "onnx"\nprecision = "fp32"\n'
                    '[[variants]]\nformat = "executorch"\nprecision = "fp32"\n')
    return path


def replaced_reference(directory: Path, seed: int) -> None:
    """Another model's greedy tokens and logits as the reference: every artifact must now fail."""
    import torch

    from common.files import save_npz

    model = _model(seed)
    path = directory / "reference.npz"
    with np.load(path) as stored:
        sources = stored["sources"]
    with torch.no_grad():
        decoded = [greedy(lambda m, x: [t.numpy() for t in _as_tuple(getattr(model, m)(*map(torch.from_numpy, x)))],
                          s) for s in sources]
    save_npz(path, {"sources": sources, "tokens": np.array([t for t, _ in decoded]),
                    "logits": np.stack([logits for _, logits in decoded])})

