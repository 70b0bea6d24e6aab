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

from common.artifact_dir import cache_io_names
from common.errors import ArtifactError, first_line
from validators.lm.runtime import CachedLM

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


class OnnxLM(CachedLM):
    """A language model's decode step in onnxruntime, the KV cache fed back through I/O binding (no copies).

    The manifest's `cache` entry says how the artifact is fed (exporter/lm/decode_step.py):
      position "position_ids": the positions of the tokens in this call, [1, tokens] (edgeport's own export;
      "cache_position", [tokens], in directories exported before it);
      position "attention_mask": ones over every position so far (onnxruntime-genai's builder; its
      GroupQueryAttention writes into the past buffer in place when past and present share it).
    """

    def __init__(self, path: Path, cache: dict, threads: int = 1) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.runtime = f"onnxruntime {ort.__version__} (CPUExecutionProvider, {threads} thread(s))"
        self.io = cache["io"]
        self.layers, self.kv_heads, self.head_dim = cache["layers"], cache["kv_heads"], cache["head_dim"]
        self.cache_length, self.prefill_length = cache["cache_length"], cache["prefill_length"]
        inputs, outputs = cache_io_names(self.layers, self.io)
        self.names = inputs[2:] + outputs[1:]
        self.shared_buffer = self.io["position"] == "attention_mask"
        self.reset()

    def reset(self) -> None:
        import onnxruntime as ort

        shape = (1, self.kv_heads, self.cache_length, self.head_dim)
        self.past = [ort.OrtValue.ortvalue_from_numpy(np.zeros(shape, np.float32)) for _ in range(2 * self.layers)]
        self.length = 0

    def forward(self, tokens: list[int]) -> np.ndarray:
        import onnxruntime as ort

        count = len(tokens)
        self.check_room(count)
        binding = self.session.io_binding()
        binding.bind_cpu_input("input_ids", np.asarray([tokens], dtype=np.int64))
        if self.shared_buffer:
            binding.bind_cpu_input("attention_mask", np.ones((1, self.length + count), dtype=np.int64))
        else:
            positions = np.arange(self.length, self.length + count, dtype=np.int64)
            binding.bind_cpu_input(self.io["position"], positions[None] if self.io["position"] == "position_ids"
                                   else positions)
        half = 2 * self.layers
        for name, value in zip(self.names[:half], self.past, strict=True):
            binding.bind_ortvalue_input(name, value)
        binding.bind_output("logits", "cpu")
        for name, value in zip(self.names[half:], self.past, strict=True):
            if self.shared_buffer:  # present is the past buffer, written in place
                binding.bind_ortvalue_output(name, value)
            else:
                binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        outputs = binding.get_outputs()
        if not self.shared_buffer:
            self.past = [ort.OrtValue(v) if not isinstance(v, ort.OrtValue) else v for v in outputs[1:]]
        self.length += count
        return outputs[0].numpy()[0]


def open_lm(path: Path, cache: dict, threads: int) -> OnnxLM:
    return OnnxLM(path, cache, threads)
