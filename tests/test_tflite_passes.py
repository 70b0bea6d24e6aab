"""TFLite passes (exporter/formats/tflite/passes.py): exact rewrites of the traced module, checked by
running the module before and after on the same inputs, and by what each leaves in the graph."""

from __future__ import annotations

import torch
from torch import nn

from exporter.formats.tflite.passes import AffineAsDepthwise, SingleChannelConv, run_passes
from tests import zoo


def _module(model: nn.Module, example: torch.Tensor):
    return torch.export.export(model, (example,), strict=False).module()


def _rewritten(tflite_pass, model: nn.Module, example: torch.Tensor, rewrites: int):
    """The model's traced module after the pass, which rewrote `rewrites` places and computes the same."""
    module = _module(model, example)
    assert tflite_pass.run(module) == rewrites
    module.recompile()
    with torch.no_grad():
        assert torch.allclose(module(example), model(example), atol=1e-5)
    return module


def _ops(module) -> list[str]:
    return [str(n.target) for n in module.graph.nodes if n.op == "call_function"]


def _kernels(module) -> list[tuple[int, ...]]:
    """Shapes of the conv kernels the module reads (a parameter, or a buffer a pass registered)."""
    shapes = []
    for node in module.graph.nodes:
        if str(node.target) == "aten.conv2d.default" and node.args[1].op == "get_attr":
            name = node.args[1].target
            shapes.append(tuple((module.get_parameter(name) if "." in name else getattr(module, name)).shape))
    return shapes


def test_affine_as_depthwise_rewrites_a_batchnorm_after_a_relu_exactly():
    model, _ = zoo.pitch_cnn()
    module = _rewritten(AffineAsDepthwise(), model, torch.randn(1, 256), 2)
    assert not any("batch_norm" in op for op in _ops(module))
    assert (16, 1, 1, 1) in _kernels(module)  # one scale per channel: a depthwise 1x1 conv


def test_affine_as_depthwise_leaves_a_batchnorm_the_converter_folds():
    model, example = zoo.cnn()  # conv -> BatchNorm -> activation: folded into the conv during conversion
    module = _module(model, example[0])
    assert AffineAsDepthwise().run(module) == 0


def test_single_channel_conv_over_phases_is_exact_and_stride_one():
    model, _ = zoo.pitch_cnn()
    module = _rewritten(SingleChannelConv(), model, torch.randn(1, 256), 1)
    assert (16, 4, 1, 16) in _kernels(module)  # 4 phases of the stride-4 input, 64 / 4 taps along the width
    fronts = [n for n in module.graph.nodes if str(n.target) == "aten.conv2d.default"]
    assert all(list(n.args[3]) == [1, 1] for n in fronts if len(n.args) > 3)


def test_single_channel_conv_along_the_width_and_what_it_leaves_alone():
    class Front(nn.Module):
        def __init__(self):
            super().__init__()
            self.wide = nn.Conv2d(1, 8, (1, 32), stride=(1, 2), bias=False)  # aten.conv2d(x, w): no bias argument
            self.uneven = nn.Conv2d(8, 4, (1, 3))  # more than one input channel: left alone

        def forward(self, x):
            return self.uneven(self.wide(x))

    torch.manual_seed(0)
    model, x = Front().eval(), torch.randn(1, 1, 1, 128)
    module = _module(model, x)
    assert [(r.id, r.rewrites) for r in run_passes(module, ("single_channel_conv",))] == [("single_channel_conv", 1)]
    assert (8, 2, 1, 16) in _kernels(module)  # 2 phases, 32 / 2 taps
    with torch.no_grad():
        assert torch.allclose(module(x), model(x), atol=1e-5)
