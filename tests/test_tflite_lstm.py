"""torch.nn.LSTM reaches LiteRT as one fused UNIDIRECTIONAL_SEQUENCE_LSTM per layer (tflite/recurrent.py),
checked with LiteRT's own kernels against PyTorch, call after call."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from exporter.formats.tflite.layers import read_operators
from exporter.formats.tflite.recurrent import fused_lstm_module
from validators.runtimes.litert_runtime import LiteRtSession, variable_tensors


class Encoder(nn.Module):
    def __init__(self, batch_first: bool, bias: bool, read_cell: bool = False) -> None:
        super().__init__()
        self.batch_first, self.read_cell = batch_first, read_cell
        self.lstm = nn.LSTM(12, 20, 2, batch_first=batch_first, bias=bias)
        self.linear = nn.Linear(20, 8)

    def forward(self, frames):
        output, (hidden, cell) = self.lstm(frames)
        last = output[:, -1] if self.batch_first else output[-1]
        extra = cell[-1] if self.read_cell else hidden[-1]
        return self.linear(last) + extra.sum(-1, keepdim=True)


def _convert(model, example, path):
    import litert_torch

    module, fused = fused_lstm_module(torch.export.export(model, example, strict=False).module())
    litert_torch.convert(module, example).export(str(path))
    return fused


@pytest.mark.parametrize("batch_first,bias", [(True, True), (False, False)])
def test_lstm_is_one_fused_op_per_layer_with_pytorch_outputs(tmp_path, batch_first, bias):
    torch.manual_seed(0)
    model = Encoder(batch_first, bias).eval()
    shape = (1, 30, 12) if batch_first else (30, 1, 12)
    path = tmp_path / "model.tflite"
    assert _convert(model, (torch.randn(shape),), path) == 1
    ops = [op.op for op in read_operators(path)]
    assert ops.count("UNIDIRECTIONAL_SEQUENCE_LSTM") == 2 and len(ops) < 20  # unrolled: ~16 ops a step
    assert variable_tensors(path)  # the state LiteRT carries between calls
    session = LiteRtSession(path, threads=1, delegate="xnnpack")
    for seed in range(3):  # distinct inputs, one session: each call must start from zero state
        frames = torch.randn(shape, generator=torch.Generator().manual_seed(seed))
        with torch.no_grad():
            expected = model(frames).numpy()
        (got,) = session.run({"frames": frames.numpy()})
        assert np.abs(got - expected).max() <= 1e-4


def test_an_lstm_whose_cell_state_is_read_stays_unrolled():
    model = Encoder(True, True, read_cell=True).eval()
    program = torch.export.export(model, (torch.randn(1, 5, 12),), strict=False)
    module, fused = fused_lstm_module(program.module())
    assert fused == 0 and any(n.target == torch.ops.aten.lstm.input for n in module.graph.nodes)
