"""PT2E quantization with the XNNPACK quantizer: the whole model, one module alone (per-layer blame), or
all but some modules (auto precision), on the one traced program's module."""

from __future__ import annotations

import copy
from collections.abc import Iterable

import torch

from exporter.trace import TracedModel

RECIPES = {"int8": "PT2E static int8, XNNPACK quantizer: per-channel symmetric int8 weights, int8 activations "
                   "calibrated on --calib data",
           "int8_dynamic": "PT2E dynamic int8, XNNPACK quantizer: per-channel int8 weights, activations quantized "
                           "per run"}


def quantized_module(traced: TracedModel, batches: list[dict], dynamic: bool = False, only: str | None = None,
                     keep_float: Iterable[str] = ()) -> torch.fx.GraphModule:
    """The traced module after PT2E (fake-quantized: quantize/dequantize pairs around float ops, the
    arithmetic the XNNPACK int8 kernels run), calibrated on `batches` (the example inputs when none)."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (
        XNNPACKQuantizer,
        get_symmetric_quantization_config,
    )
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e
    from torchao.quantization.pt2e.quantizer.utils import get_module_name_filter

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=dynamic)
    quantizer = XNNPACKQuantizer()
    if only is not None:
        quantizer.set_module_name(only, config)
    else:
        quantizer.set_global(config)
        kept = [get_module_name_filter(name) for name in keep_float]
        if kept:
            quantizer.set_filter_function(lambda node: not any(inside(node) for inside in kept))
    module = prepare_pt2e(copy.deepcopy(traced.program.module()), quantizer)
    with torch.no_grad():
        for feeds in batches or [dict(zip(traced.loaded.input_names, traced.example_inputs, strict=True))]:
            module(*(torch.as_tensor(v) for v in feeds.values()))
    return convert_pt2e(module)
