"""A staged, in-process harness for one format, after ExecuTorch's Tester: the pipeline's own stages
run one by one on a model, each checkable, with no subprocess and no latency runs.

    staged = Staged(zoo.cnn).trace()
    staged.lower("onnx").check_count({"BatchNormalization": 0})
    result = staged.emit("int8").compare()          # the artifact in its real runtime vs PyTorch
    assert result.overall["sqnr_db"] >= 25

The CLI contract (exit codes, one-line errors, atomic directories, byte identity) keeps its own
subprocess tests; format behaviour is tested here."""

from __future__ import annotations

import itertools
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np

from common.artifact_dir import Reference
from exporter.formats import backend
from exporter.formats.base import Emitted, Lowered
from exporter.sources import _finish
from exporter.trace import TracedModel, trace
from targets.catalog import PASSES, PRECISIONS
from targets.profile import target_from_dict
from validators.candidate import CandidateResult, ModelIO, evaluate
from validators.runtimes import open_session

# The passes a harness lowering runs unless told otherwise: all of the format's, in catalog order.
ALL_PASSES = {fmt: list(passes) for fmt, passes in PASSES.items() if passes}


def narrowed(variable: str, values: list[str]) -> list[str]:
    """`values`, or those of them an environment variable lists, comma-separated (for local work; CI sets
    none). One variable serves several matrices: EDGEPORT_TEST_FAMILIES=cnn,bert narrows both zoos."""
    wanted = os.environ.get(variable, "")
    return [v for v in values if v in wanted.split(",")] if wanted else values


def matrix(families: list[str], formats: list[str] | None = None,
           keep: Callable[[str, str, str], bool] = lambda family, fmt, precision: True) -> list[tuple[str, str, str]]:
    """(family, format, precision) cases: a filtered product of the catalog, narrowed by
    EDGEPORT_TEST_FAMILIES / EDGEPORT_TEST_FORMATS / EDGEPORT_TEST_PRECISIONS."""
    formats = narrowed("EDGEPORT_TEST_FORMATS", formats or list(PRECISIONS))
    families = narrowed("EDGEPORT_TEST_FAMILIES", families)
    cases = [(family, fmt, precision)
             for family, fmt in itertools.product(families, formats)
             for precision in PRECISIONS[fmt] if keep(family, fmt, precision)]
    precisions = narrowed("EDGEPORT_TEST_PRECISIONS", sorted({p for _, _, p in cases}))
    return [c for c in cases if c[2] in precisions]


def _quiet(_: str) -> None:
    pass


class Staged:
    """One model through the pipeline's stages, in this process."""

    def __init__(self, factory: Callable, name: str = "model", samples: int = 48, seed: int = 0):
        self.module, self.examples = factory()
        self.name, self.samples, self.seed = name, samples, seed
        self.traced: TracedModel | None = None
        self.lowered: Lowered | None = None
        self.emitted: Emitted | None = None
        self.out: Path | None = None
        self._scratch = tempfile.TemporaryDirectory(prefix="edgeport-harness-")
        self.scratch = Path(self._scratch.name)

    def trace(self, dynamic_batch: bool = False) -> Staged:
        self.traced = trace(_finish(self.module, self.examples, [], self.name, "module", self.name), dynamic_batch)
        return self

    def preflight(self, fmt: str) -> list:
        return backend(fmt).preflight(self.traced)

    def data(self, seed_offset: int = 0) -> dict[str, np.ndarray]:
        """Seeded inputs shaped like the examples (integers stay inside the examples' range)."""
        rng = np.random.default_rng(self.seed + seed_offset)
        arrays = {}
        for spec, example in zip(self.traced.inputs, self.examples, strict=True):
            shape = (self.samples, *spec.sample_shape)
            if np.dtype(spec.dtype).kind == "f":
                arrays[spec.name] = rng.standard_normal(shape).astype(spec.dtype)
            else:
                arrays[spec.name] = rng.integers(0, int(example.max()) + 1, shape).astype(spec.dtype)
        return arrays

    def lower(self, fmt: str, passes: list[str] | None = None, **target: object) -> Staged:
        profile = {"name": "harness", "variants": [{"format": fmt, "precision": p} for p in PRECISIONS[fmt]],
                   "passes": {fmt: ALL_PASSES.get(fmt, []) if passes is None else passes}, **target}
        scratch = self.scratch / f"lower-{fmt}"
        scratch.mkdir()
        self.lowered = backend(fmt).lower(self.traced, target_from_dict(profile, "harness"), scratch, _quiet)
        return self

    def check_count(self, expected: dict[str, int]) -> Staged:
        """Operator counts of the lowered float program (ONNX node types)."""
        counts = Counter(node.op_type for node in self.lowered.state.model.graph.node)
        assert {op: counts.get(op, 0) for op in expected} == expected, dict(counts)
        return self

    def emit(self, precision: str) -> Staged:
        fmt = self.lowered.target.variants[0].format
        variant = next(v for v in self.lowered.target.variants if v.precision == precision)
        self.out = self.scratch / variant.filename
        calibration = self.data(seed_offset=1) if variant.needs_calibration else None
        self.emitted = backend(fmt).emit(self.lowered, variant, calibration, self.out, _quiet)
        return self

    def reference(self) -> Reference:
        inputs = self.data()
        outputs = self.traced.reference_outputs(inputs)
        return Reference(inputs, {s.name: o for s, o in zip(self.traced.outputs, outputs, strict=True)}, None)

    def compare(self) -> CandidateResult:
        """The emitted artifact run by its real runtime against the PyTorch model, judged by the
        precision's default budget."""
        fmt = self.lowered.target.variants[0].format
        variant = next(v for v in self.lowered.target.variants if v.filename == self.out.name)
        io = ModelIO([s.name for s in self.traced.inputs], [s.name for s in self.traced.outputs], self.traced.batch)
        return evaluate(open_session(fmt, self.out, 1).run, self.reference(), io, variant.budget)


def provenance_in(fmt: str, path) -> dict:
    """Read the provenance back with each format's own library."""
    if fmt == "onnx":
        import onnx

        model = onnx.load(str(path), load_external_data=False)
        return {p.key: p.value for p in model.metadata_props if p.key.startswith("edgeport.")}
    if fmt == "tflite":
        from ai_edge_litert.tools import flatbuffer_utils

        model = flatbuffer_utils.read_model(str(path))
        (entry,) = [m for m in model.metadata if m.name.decode() == "edgeport"]
        return json.loads(bytes(model.buffers[entry.buffer].data).decode())
    if fmt == "executorch":
        from exporter.formats.executorch.backend import provenance_path

        return json.loads(provenance_path(path).read_text())
    from coremltools.proto import Model_pb2

    spec = Model_pb2.Model()
    spec.ParseFromString(next(path.glob("Data/com.apple.CoreML/model.mlmodel")).read_bytes())
    return {k: v for k, v in spec.description.metadata.userDefined.items() if k.startswith("edgeport.")}
