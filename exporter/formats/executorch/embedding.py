"""The input embedding as ExecuTorch's quantized lookup, the way its LLM export quantizes it: int4 packed two
per byte (`quantized_decomposed::embedding_4bit`) or int8 (`embedding_byte`), one float16 scale (and, for
asymmetric blocks, one float16 zero point) per group of a row, run by ExecuTorch's quantized kernels. The codes
and scales are the weight plan's (exporter/quant/plan.py), as every linear's are. XNNPACK has no quantized gather,
and a float table is most of a small language model's 4-bit program (SmolLM2-135M: 108 of the a8w4 .pte's 181
MiB)."""

from __future__ import annotations

import executorch.exir.passes  # noqa: F401  defines the quantized_decomposed lookups for PyTorch
import torch

from exporter.quant.plan import QuantizedWeight, Scheme

LOOKUPS = {4: "embedding_4bit", 8: "embedding_byte"}  # bits -> quantized_decomposed operator


class QuantizedEmbedding(torch.nn.Module):
    """The plan's table looked up, times the scale the model's own embedding multiplies by (Gemma's
    sqrt(hidden))."""

    def __init__(self, plan: QuantizedWeight, scale: float = 1.0) -> None:
        super().__init__()
        bits, middle = plan.scheme.bits, 2 ** (plan.scheme.bits - 1)
        rows, dim = plan.codes.shape
        self.bits, self.low, self.high, self.scale = bits, -middle, middle - 1, scale
        if bits == 4:  # the kernel's codes are unsigned nibbles, two per byte, the even column high
            pairs = plan.codes.to(torch.uint8).reshape(rows, dim // 2, 2)
            codes = pairs[:, :, 0] * 16 + pairs[:, :, 1]
        else:
            codes = (plan.codes.int() - middle).to(torch.int8)
        # the kernel computes (signed code - zero point) * scale: the plan's zero point less the code offset
        zero_points = None if plan.scheme.symmetric else (plan.zero_points - middle).half()
        self.register_buffer("weight", codes)
        self.register_buffer("scales", plan.scales.half())
        self.register_buffer("zero_points", zero_points)

    def forward(self, indices: torch.Tensor) -> torch.Tensor:
        lookup = getattr(torch.ops.quantized_decomposed, LOOKUPS[self.bits])
        # ExecuTorch's kernel wants zero points of the output's type, and its Python definition of the scales':
        # with zero points, the lookup is float16 and cast after
        out = torch.float32 if self.zero_points is None else torch.float16
        rows = lookup.dtype(self.weight, self.scales, self.zero_points, self.low, self.high, indices,
                            dtype=out).float()
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


def lookup_scheme(table: torch.Tensor, bits: int, scheme: Scheme) -> Scheme:
    """The blocks the lookup holds: `scheme`'s at 4 bits (the decoder linears'), symmetric 8-bit blocks of the same
    size at 8 bits (GGUF's Q8_0); one block per row where the row does not divide into them, and 8 bits for an odd
    row (int4 packs two columns per byte)."""
    dim = table.shape[1]
    bits = 8 if bits == 4 and dim % 2 else bits
    block = scheme.block_size if dim % scheme.block_size == 0 else dim
    return Scheme(4, block, scheme.symmetric, scheme.float_zero_points) if bits == 4 else Scheme(8, block, True)


def quantize_embedding(model: torch.nn.Module, plan: QuantizedWeight) -> dict:
    """Replace the model's input embedding in place by the plan's lookup. Returns what the manifest records."""
    from exporter.quant.rotate import RotatedEmbedding

    embedding = model.get_input_embeddings()
    rotated = embedding if isinstance(embedding, RotatedEmbedding) else None  # a rotated table stays rotated back
    lookup = QuantizedEmbedding(plan, output_scale(embedding.embedding if rotated else embedding))
    model.set_input_embeddings(rotated.around(lookup) if rotated else lookup)
    return {"bits": plan.scheme.bits, "group_size": plan.scheme.block_size, "blocks": plan.scheme.describe(),
            "method": plan.method, "scales": "float16",
            "zero_points": None if plan.scheme.symmetric else "float16",
            "kernel": f"quantized_decomposed::{LOOKUPS[plan.scheme.bits]}", "output_scale": lookup.scale}
