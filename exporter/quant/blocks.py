"""Asymmetric weight blocks on runtimes whose int4 blocks are symmetric only: XNNPACK's groupwise weights carry
scales and no zero points (ExecuTorch drops any it is given), and LiteRT's block-wise tensors have none. A block
`(code - zero_point) * scale` is its symmetric part `(code - 8) * scale` plus a constant offset
`(8 - zero_point) * scale`, so

    x @ W.T = int4_linear(x) + block_means(x) @ (block_size * offsets).T

where block_means averages each block's inputs and `offsets` is [rows, blocks]: one small matmul beside the int4
one (1/block_size of its multiply-adds), run by XNNPACK too; its caller quantizes it as an a8w8 linear (int8
per row). A GGUF Q4_1 source's blocks (scale and exact minimum) keep their codes and scales; only the minimums
are rounded, to 8 bits per row."""

from __future__ import annotations

import torch


class BlockOffsetLinear(torch.nn.Module):
    """`linear` (its weight the plan's symmetric part, as torchao lays it out) plus each block's offset."""

    def __init__(self, linear: torch.nn.Module, offsets: torch.Tensor, block_size: int) -> None:
        super().__init__()
        rows, blocks = offsets.shape
        self.linear, self.block_size, self.blocks = linear, block_size, blocks
        self.offsets = torch.nn.Linear(blocks, rows, bias=False)
        with torch.no_grad():  # times block_size: the matmul reads block means, which XNNPACK computes
            self.offsets.weight.copy_(offsets.float() * block_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        # a mean over the last two dimensions of a 4-D tensor, dimensions kept: the reduction XNNPACK delegates
        means = x.reshape(-1, self.blocks, self.block_size, 1).mean((-2, -1), keepdim=True).reshape(-1, self.blocks)
        return self.linear(x) + self.offsets(means).reshape(*lead, -1)
