"""The input embedding as ExecuTorch's quantized lookup, the way its LLM export quantizes it: int4 packed two
per byte (`quantized_decomposed::embedding_4bit`) or int8 (`embedding_byte`), symmetric, one float16 scale per
group of a row, run by ExecuTorch's quantized kernels. XNNPACK has no quantized gather, and a float table is
most of a small language model's 4-bit program (SmolLM2-135M: 108 of the a8w4 .pte's 181 MiB)."""

from __future__ import annotations

import executorch.exir.passes  # noqa: F401  defines the quantized_decomposed lookups for PyTorch
import torch

LOOKUPS = {4: "embedding_4bit", 8: "embedding_byte"}  # bits -> quantized_decomposed operator


class QuantizedEmbedding(torch.nn.Module):
    """The lookup, times the scale the model's own embedding multiplies by (Gemma's sqrt(hidden))."""

    def __init__(self, weight: torch.Tensor, bits: int, group_size: int, scale: float = 1.0) -> None:
        super().__init__()
        rows, dim = weight.shape
        self.bits, self.low, self.high, self.scale = bits, -(2 ** (bits - 1)), 2 ** (bits - 1) - 1, scale
        groups = weight.detach().float().reshape(rows, dim // group_size, group_size)
        # torchao's symmetric mapping (ExecuTorch's embedding quantizer): the largest magnitude of a group to
        # (high - low) / 2; the codes are rounded with the float16 scale the kernel will multiply by
        scales = (groups.abs().amax(-1) / ((self.high - self.low) / 2)).clamp(min=1e-8).half()
        codes = (groups / scales.float().unsqueeze(-1)).round().clamp(self.low, self.high).to(torch.int8)
        codes = codes.reshape(rows, dim)
        if bits == 4:  # two codes per byte, the even column in the high nibble
            shifted = (codes + 8).to(torch.uint8).reshape(rows, dim // 2, 2)
            codes = shifted[:, :, 0] * 16 + shifted[:, :, 1]
        self.register_buffer("weight", codes)
        self.register_buffer("scales", scales.squeeze(-1) if scales.shape[-1] == 1 else scales)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        lookup = getattr(torch.ops.quantized_decomposed, LOOKUPS[self.bits])
        rows = lookup.dtype(self.weight, self.scales, None, self.low, self.high, indices, dtype=torch.float32)
        return rows if self.scale == 1.0 else rows * self.scale


def output_scale(embedding: torch.nn.Module) -> float:
    """The constant the model's embedding module multiplies its lookup by (1.0 for a plain nn.Embedding). A module
    that computes anything else is refused: its replacement would silently drop it."""
    from exporter.errors import ConversionError

    scale = float(getattr(embedding, "embed_scale", 1.0))
    ids = torch.arange(min(16, embedding.weight.shape[0]))
    with torch.no_grad():
        expected = embedding.weight[ids].float() * scale
        computed = embedding(ids).float()
    if not torch.allclose(computed, expected, rtol=1e-5, atol=1e-6):
        raise ConversionError(f"the input embedding ({type(embedding).__name__}) computes more than a scaled table "
                              "lookup, which ExecuTorch's quantized lookup would drop: for a8w4 set embedding_bits "
                              "= 32 in the target's [lm] table to keep it float (a8w8 always quantizes it), or export "
                              "to onnx or tflite")
    return scale


def quantize_embedding(model: torch.nn.Module, bits: int, block_size: int) -> dict:
    """Replace the model's input embedding in place; groups of block_size where the row divides into them,
    else one group per row. Returns what the manifest records."""
    embedding = model.get_input_embeddings()
    table, scale = embedding.weight, output_scale(embedding)
    bits = 8 if bits == 4 and table.shape[1] % 2 else bits  # int4 packs two columns per byte
    group = block_size if table.shape[1] % block_size == 0 and bits == 4 else table.shape[1]
    model.set_input_embeddings(QuantizedEmbedding(table, bits, group, scale))
    return {"bits": bits, "group_size": group, "symmetric": True, "scales": "float16",
            "kernel": f"quantized_decomposed::{LOOKUPS[bits]}", "output_scale": scale}
