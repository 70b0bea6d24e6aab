"""TFLite artifacts run by ai-edge-litert's Interpreter, XNNPACK on as on Android CPUs (or off).

Integer I/O tensors are fed and read as a device app would: float inputs quantized with the
tensor's scale and zero point, integer outputs dequantized with theirs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from common.artifact_dir import LITERT_SIGNATURE as SIGNATURE
from common.artifact_dir import cache_io_names
from common.errors import ArtifactError, first_line
from common.quiet import silenced
from targets.profile import TFLITE_DELEGATES as DELEGATES
from validators.lm.runtime import CachedLM


def quantize(values: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((values.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


def _interpreter(path: Path, threads: int, delegate: str, keep_intermediates: bool = False):
    """The loaded interpreter and the runtime's label."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    with silenced():
        from ai_edge_litert import interpreter as litert

    resolver = (litert.OpResolverType.AUTO if delegate == "xnnpack"
                else litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    try:
        with silenced():
            interp = litert.Interpreter(str(path), num_threads=threads, experimental_op_resolver_type=resolver,
                                        experimental_preserve_all_tensors=keep_intermediates)
    except Exception as exc:  # corrupt flatbuffer, unknown custom op
        raise ArtifactError(f"{path} cannot be loaded by ai-edge-litert ({first_line(exc)}); re-export it") from None
    version = getattr(litert, "__version__", "") or _package_version()
    return interp, f"ai-edge-litert {version} ({'XNNPACK' if delegate == 'xnnpack' else 'builtin kernels'}, host)"


def _signature(interp, path: Path, name: str):
    try:
        return interp.get_signature_runner(name)
    except Exception as exc:  # a .tflite without that signature
        raise ArtifactError(f"{path} has no signature {name!r} ({first_line(exc)}); re-export it") from None


class LiteRtSession:
    def __init__(self, path: Path, threads: int, delegate: str = "xnnpack", keep_intermediates: bool = False):
        """keep_intermediates keeps every tensor readable after a run (tensor()); use it with
        delegate "none": a delegate computes its partition internally and leaves no intermediates."""
        interp, self.runtime = _interpreter(path, threads, delegate, keep_intermediates)
        self._runner = _signature(interp, path, SIGNATURE)
        self._inputs = self._runner.get_input_details()
        self._outputs = self._runner.get_output_details()
        self.input_names = list(self._inputs)
        self._interpreter = interp
        self._tensors = {d["name"]: d for d in interp.get_tensor_details()} if keep_intermediates else {}
        self._stateful = bool(variable_tensors(path))

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        """feeds are in the model's input order (the manifest's), keyed by the model's names."""
        kwargs = {}
        for (sig_name, details), value in zip(self._inputs.items(), feeds.values(), strict=True):
            dtype = np.dtype(details["dtype"])
            scale, zero_point = details["quantization"]
            if dtype.kind in "iu" and scale and value.dtype.kind == "f":
                kwargs[sig_name] = quantize(value, scale, zero_point, dtype)
            else:
                kwargs[sig_name] = value.astype(dtype, copy=False)
        results = self._runner(**kwargs)
        if self._stateful:  # the next call starts from zero state, as the manifest tells an app to do (reset
            self._interpreter.reset_all_variables()  # after the call: before the first, nothing is allocated)
        outputs = []
        for sig_name, details in self._outputs.items():
            value = results[sig_name]
            scale, zero_point = details["quantization"]
            if np.dtype(details["dtype"]).kind in "iu" and scale:
                value = dequantize(value, scale, zero_point)
            outputs.append(value)
        return outputs


    def tensor(self, name: str) -> np.ndarray:
        """A tensor's value from the last run, by name, dequantized if it is an integer tensor."""
        details = self._tensors[name]
        value = self._interpreter.get_tensor(details["index"])
        scales = details["quantization_parameters"]["scales"]
        if value.dtype.kind in "iu" and len(scales) == 1:
            return dequantize(value, float(scales[0]), int(details["quantization_parameters"]["zero_points"][0]))
        return value.astype(np.float32, copy=False)


def variable_tensors(path: Path) -> list[str]:
    """The names of the model's variable tensors: state LiteRT carries from one invoke to the next (a fused
    LSTM's), which an app resets (Interpreter::ResetVariableTensors) before a call that starts afresh."""
    from ai_edge_litert import schema_py_generated as schema

    # the flatbuffer read in place (unpacking every tensor into Python objects took seconds for a MobileViT)
    model = schema.Model.GetRootAs(Path(path).read_bytes(), 0)
    graphs = (model.Subgraphs(g) for g in range(model.SubgraphsLength()))
    return [tensor.Name().decode() for graph in graphs
            for tensor in (graph.Tensors(t) for t in range(graph.TensorsLength())) if tensor.IsVariable()]


def _package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        return "?"


class LiteRtLM(CachedLM):
    """A language model's prefill and decode signatures (exporter/formats/tflite/lm.py), the KV cache arrays
    handed from one call's outputs to the next call's inputs; a prefill chunk shorter than the signature's
    length is padded (its padding rows are overwritten by later tokens before any query can see them)."""

    def __init__(self, path: Path, cache: dict, threads: int = 1) -> None:
        interp, self.runtime = _interpreter(path, threads, "xnnpack")
        io = cache["io"]
        self.layers, self.kv_heads, self.head_dim = cache["layers"], cache["kv_heads"], cache["head_dim"]
        self.cache_length, self.prefill_length = cache["cache_length"], cache["prefill_length"]
        inputs, outputs = cache_io_names(self.layers, io)
        self.tokens, self.position, self.past_names, self.present_names = inputs[0], inputs[1], inputs[2:], outputs[1:]
        self.prefill_runner, self.decode_runner = (_signature(interp, path, name) for name in ("prefill", "decode"))
        self.reset()

    def reset(self) -> None:
        shape = (1, self.kv_heads, self.cache_length, self.head_dim)
        self.past = [np.zeros(shape, np.float32) for _ in range(2 * self.layers)]
        self.length = 0

    def forward(self, tokens: list[int]) -> np.ndarray:
        count = len(tokens)
        self.check_room(count)
        width = 1 if count == 1 else self.prefill_length
        if count > width:
            raise ValueError(f"{count} tokens in one call; the prefill signature takes {width}")
        positions = self.length + np.arange(width, dtype=np.int32)
        # padding writes cache rows past the real tokens; never past the cache's end
        positions = np.minimum(positions, self.cache_length - 1)
        feeds = {self.tokens: np.asarray([list(tokens) + [0] * (width - count)], np.int32),
                 self.position: positions, **dict(zip(self.past_names, self.past, strict=True))}
        results = (self.decode_runner if width == 1 else self.prefill_runner)(**feeds)
        self.past = [results[name] for name in self.present_names]
        self.length += count
        return results["logits"][0, :count]


def open_lm(path: Path, cache: dict, threads: int) -> LiteRtLM:
    return LiteRtLM(path, cache, threads)


def open_session(path: Path, threads: int, delegate: str = "xnnpack") -> LiteRtSession:
    if delegate not in DELEGATES:
        raise ValueError(f"unknown TFLite delegate {delegate!r}")
    return LiteRtSession(path, threads, delegate)
