"""ONNX artifacts run by onnxruntime on the CPU, with the thread count the target profile sets.

On an x86-64 host with AVX2 but no VNNI, onnxruntime's uint8 x int8 kernels (VPMADDUBSW) saturate
their 16-bit sums: a ConvNeXt's int8 QDQ model measured 7.3 dB SQNR there and 24.4 dB with the QDQ
arithmetic as written, which is what ARM phones (and VNNI CPUs) compute. On such a host a uint8-QDQ
artifact is judged with the QDQ arithmetic (`session.disable_quant_qdq`) and timed with the integer
kernels, and the runtime label says so."""

from __future__ import annotations

import functools
import platform
from pathlib import Path

import numpy as np

from common.errors import ArtifactError, first_line

QDQ_ARITHMETIC = ("QDQ arithmetic as written: this host's AVX2 uint8 x int8 kernels saturate where ARM "
                  "and VNNI CPUs do not; timed with the integer kernels")


@functools.cache
def saturating_host() -> bool:
    """x86-64 with AVX2 and without VNNI: where onnxruntime's U8S8 kernels can saturate."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return False
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        return False
    return "avx2" in flags and not flags & {"avx512_vnni", "avx_vnni"}


def _has_uint8_qdq(path: Path) -> bool:
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # a corrupt file: onnxruntime's own load names the problem
        return False
    zero_points = {i.name: i.data_type for i in model.graph.initializer}
    return any(n.op_type == "QuantizeLinear" and len(n.input) > 2
               and zero_points.get(n.input[2]) == onnx.TensorProto.UINT8 for n in model.graph.node)


class OnnxRuntimeSession:
    def __init__(self, path: Path, threads: int, qdq_arithmetic: bool = False):
        import onnxruntime as ort

        self._session = self._open(path, threads, {"session.disable_quant_qdq": "1"} if qdq_arithmetic else {})
        label = QDQ_ARITHMETIC if qdq_arithmetic else "host"
        self.runtime = f"onnxruntime {ort.__version__} (CPUExecutionProvider, {label})"
        self.input_names = [i.name for i in self._session.get_inputs()]
        self.output_names = [o.name for o in self._session.get_outputs()]
        self.timed = OnnxRuntimeSession(path, threads) if qdq_arithmetic else self

    @staticmethod
    def _open(path: Path, threads: int, config: dict[str, str]):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.log_severity_level = 3
        for key, value in config.items():
            options.add_session_config_entry(key, value)
        try:
            return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own types for corrupt or unsupported files
            raise ArtifactError(f"{path} cannot be loaded by onnxruntime ({first_line(exc)}); re-export it") from None

    def run(self, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return self._session.run(self.output_names, feeds)


def open_session(path: Path, threads: int) -> OnnxRuntimeSession:
    return OnnxRuntimeSession(path, threads, qdq_arithmetic=saturating_host() and _has_uint8_qdq(path))
