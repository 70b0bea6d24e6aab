"""Per-layer SQNR computed without edgeport's code, to check its blame tables against.

ONNX: the graph is cut at the layer's tensor with onnx.utils.Extractor and the cut model is run
sample by sample. TFLite: ai-edge-quantizer's own model validator (compare_model, which reads every
tensor of both models with preserve_all_tensors and dequantizes with its own code) gives the mean
squared error per tensor; the mean signal power comes through the same validator as a second metric."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx.utils import Extractor


def sqnr_db(reference: np.ndarray, value: np.ndarray) -> float:
    reference, value = reference.astype(np.float64).ravel(), value.astype(np.float64).ravel()
    return float(10 * np.log10(np.sum(reference**2) / np.sum((reference - value) ** 2)))


def onnx_tensor(model_path: Path, tensor: str, inputs: np.ndarray) -> np.ndarray:
    model = onnx.load(str(model_path))
    if tensor not in {o.name for o in model.graph.output}:  # Extractor looks names up among declared values
        model.graph.output.append(onnx.helper.make_empty_tensor_value_info(tensor))
    sub = Extractor(model).extract_model([model.graph.input[0].name], [tensor])
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # the QDQ graph as written
    session = ort.InferenceSession(sub.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.concatenate([session.run(None, {model.graph.input[0].name: inputs[i:i + 1]})[0]
                           for i in range(len(inputs))])


def onnx_accumulated_sqnr(fp32: Path, quantized: Path, row: dict, inputs: np.ndarray) -> float:
    return sqnr_db(onnx_tensor(fp32, row["tensor"], inputs), onnx_tensor(quantized, row["quantized_tensor"], inputs))


def tflite_accumulated_sqnr(fp32: Path, quantized: Path, inputs: np.ndarray) -> dict[str, float]:
    """SQNR of every tensor both models share, all samples, batch 1, builtin kernels."""
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import model_validator
    from ai_edge_quantizer.utils import validation_utils

    input_name = next(iter(Interpreter(str(fp32)).get_signature_list()["serving_default"]["inputs"]))
    metrics = [validation_utils.ValidationErrorMetric.MSE, validation_utils.ValidationErrorMetric.SNR]

    def power(_target, reference):
        return float(np.mean(np.square(np.asarray(reference, np.float64))))

    result = model_validator.compare_model(
        fp32.read_bytes(), quantized.read_bytes(),
        {"serving_default": [{input_name: inputs[i:i + 1]} for i in range(len(inputs))]},
        error_metrics=metrics, compare_fns=[validation_utils.mean_squared_difference, power],
        use_xnnpack=False, num_threads=1)
    per_tensor = result.get_all_tensor_results()
    return {name: float(10 * np.log10(values["snr"] / values["mse"]))
            for name, values in per_tensor.items() if values["mse"] > 0}


def coreml_accumulated_sqnr(package: Path, model, inputs: np.ndarray, modules: list[str]) -> dict[str, float]:
    """A weight-compressed .mlpackage's weights, decompressed by coremltools' own MIL loader (in
    constexpr order, which the caller maps to `modules`), put into a copy of the PyTorch model
    with each BatchNorm folded into the conv before it, run in fp32 PyTorch: the SQNR of each
    layer's output (after the folded BatchNorm) against the original model's."""
    import copy

    import coremltools as ct
    import torch
    from coremltools.converters.mil.frontend.milproto.load import load as milproto_load
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    mlmodel = ct.models.MLModel(str(package), skip_model_load=True)
    spec = mlmodel.get_spec()
    program = milproto_load(spec, spec.specificationVersion, file_weights_dir=mlmodel.weights_dir)
    weights = [np.asarray(op.materialized_val_inference(), np.float32)
               for op in program.functions["main"].operations if op.op_type.startswith("constexpr_")]
    assert len(weights) == len(modules)

    folded = copy.deepcopy(model).eval()
    observed = {}  # module path in the original model -> (original, folded) module whose output is the layer's
    for name, parent in list(folded.named_modules()):
        if isinstance(parent, torch.nn.Sequential):
            for i in range(len(parent) - 1):
                if isinstance(parent[i], torch.nn.Conv2d) and isinstance(parent[i + 1], torch.nn.BatchNorm2d):
                    parent[i] = fuse_conv_bn_eval(parent[i], parent[i + 1])
                    parent[i + 1] = torch.nn.Identity()
                    observed[f"{name}.{i}"] = f"{name}.{i + 1}"
    original_modules, folded_modules = dict(model.named_modules()), dict(folded.named_modules())
    with torch.no_grad():
        for path, weight in zip(modules, weights, strict=True):
            folded_modules[path].weight.copy_(torch.from_numpy(weight))
    outputs: dict[str, list] = {path: [] for path in modules}
    hooks = []
    for path in modules:
        hooks.append(original_modules[observed.get(path, path)].register_forward_hook(
            lambda _m, _i, out, path=path: outputs[path].append(out.detach().numpy().copy())))
        hooks.append(folded_modules[path].register_forward_hook(
            lambda _m, _i, out, path=path: outputs[path].append(out.detach().numpy().copy())))
    with torch.no_grad():
        model(torch.from_numpy(inputs))
        folded(torch.from_numpy(inputs))
    for hook in hooks:
        hook.remove()
    return {path: sqnr_db(values[0], values[1]) for path, values in outputs.items()}
