"""TFLite artifacts run by ai-edge-litert's Interpreter, XNNPACK on as on Android CPUs (or off).

Integer I/O tensors are fed and read as a device app would: float inputs quantized with the
tensor's scale and zero point, integer outputs dequantized with theirs."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from common.artifact_dir import LITERT_SIGNATURE as SIGNATURE
from common.errors import ArtifactError, first_line
from common.quiet import silenced
from targets.profile import TFLITE_DELEGATES as DELEGATES


def quantize(values: np.ndarray, scale: float, zero_point: int, dtype: np.dtype) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(values / scale) + zero_point, info.min, info.max).astype(dtype)


def dequantize(values: np.ndarray, scale: float, zero_point: int) -> np.ndarray:
    return ((values.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)).astype(np.float32)


class LiteRtSession:
    def __init__(self, path: Path, threads: int, delegate: str = "xnnpack", keep_intermediates: bool = False):
        """keep_intermediates keeps every tensor readable after a run (tensor()); use it with
        delegate "none": a delegate computes its partition internally and leaves no intermediates."""
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        with silenced():
            from ai_edge_litert import interpreter as litert

        resolver = (litert.OpResolverType.AUTO if delegate == "xnnpack"
                    else litert.OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
        try:
            with silenced():
                interp = litert.Interpreter(str(path), num_threads=threads, experimental_op_resolver_type=resolver,
                                            experimental_preserve_all_tensors=keep_intermediates)
                self._runner = interp.get_signature_runner(SIGNATURE)
        except Exception as exc:  # corrupt flatbuffer, missing signature, unknown custom op
            raise ArtifactError(f"{path} cannot be loaded by ai-edge-litert ({first_line(exc)}); "
                                "re-export it") from None
        version = getattr(litert, "__version__", "") or _package_version()
        self.runtime = f"ai-edge-litert {version} ({'XNNPACK' if delegate == 'xnnpack' else 'builtin kernels'}, host)"
        self._inputs = self._runner.get_input_details()
        self._outputs = self._runner.get_output_details()
        self.input_names = list(self._inputs)
        self._interpreter = interp
        self._tensors = {d["name"]: d for d in interp.get_tensor_details()} if keep_intermediates else {}

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


def _package_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("ai-edge-litert")
    except metadata.PackageNotFoundError:
        return "?"


def open_session(path: Path, threads: int, delegate: str = "xnnpack") -> LiteRtSession:
    if delegate not in DELEGATES:
        raise ValueError(f"unknown TFLite delegate {delegate!r}")
    return LiteRtSession(path, threads, delegate)
