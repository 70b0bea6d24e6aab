"""Weight plans: the integer codes, block scales and zero points of a model's linears, computed once in PyTorch
by a chosen method, for every format to write as they are (none re-quantizes).

A block is `block_size` consecutive weights along the input dimension of one output row, as onnxruntime's
MatMulNBits, torchao's groups, LiteRT's block-wise tensors and Core ML's per-block scales all lay it out.
A weight is `(code - zero_point) * scale`, codes in 0 .. 2**bits - 1:

- symmetric blocks have the zero point 2**(bits - 1) (no zero-point tensor). 8-bit scales put the block's
  magnitude at +-127 (GGUF's Q8_0, whose grid it re-finds), 4-bit ones at 7.5 steps (torchao's symmetric range);
- asymmetric blocks span the block's minimum to maximum; their zero point is a whole code (uint8 zero points)
  or, with float zero points, the exact offset (GGUF's Q4_1 "scale and minimum"), which re-finds a Q4_1
  source's own grid.

A source already on a block grid (a Q4_0, Q4_1, Q8_0 or Q4_K GGUF, dequantized to float by its loader) keeps its
own codes: `source_grid` finds each block's scale and zero point again and checks that every weight is back within
a thousandth of a step; where the scheme holds the grid, the plan is those codes (method "source") and no second
quantization happens.

Methods: round-to-nearest, and GPTQ (Frantar et al. 2022): codes chosen column by column with the rounding
error pushed onto the columns not yet quantized, weighted by the inverse Hessian of the layer's calibration
inputs, in act-order (largest Hessian diagonal first), with the block scales fixed before the error feedback
(AutoGPTQ's static groups) so the blocks stay in storage order.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from exporter.errors import UserInputError

METHODS = ("rtn", "gptq")
ON_GRID = 1e-3  # of a step: how far a weight may sit from its block's grid and still count as on it
GPTQ_DAMPING = 0.01  # of the Hessian's mean diagonal, added before the Cholesky factorization
GPTQ_COLUMNS = 128  # columns updated together (the lazy batch update of the paper)
# X^T X held at once: the linears are gathered in groups of at most this many bytes, one calibration pass
# each that stops after the group's last linear (a Qwen2.5-1.5B-shaped model's down projections alone are
# 28 x 321 MB); a model whose Hessians fit is gathered in one pass
HESSIAN_GROUP_BYTES = 1 << 30
PLAN_SLICE_WEIGHTS = 1 << 22  # weights a row-wise plan works on at once (_by_rows)


@dataclass(frozen=True)
class Scheme:
    bits: int
    block_size: int
    symmetric: bool
    float_zero_points: bool = False  # asymmetric only

    @classmethod
    def per_channel(cls, columns: int) -> Scheme:
        """8-bit symmetric codes with one scale per output channel (one block of the whole row)."""
        return cls(8, columns, True)

    def describe(self) -> str:
        kind = "symmetric" if self.symmetric else \
            "asymmetric, float zero points" if self.float_zero_points else "asymmetric, uint8 zero points"
        return f"{self.bits}-bit blocks of {self.block_size} ({kind})"


@dataclass
class QuantizedWeight:
    codes: Any  # torch.uint8 [rows, columns]
    scales: Any  # torch.float32 [rows, blocks]
    zero_points: Any  # torch.float32 [rows, blocks]; whole numbers unless scheme.float_zero_points
    scheme: Scheme
    method: str

    def dequantize(self) -> Any:
        rows, columns = self.codes.shape
        weight = (as_blocks(self.codes, self.scheme.block_size) - self.zero_points[..., None]) * self.scales[..., None]
        return weight.reshape(rows, -1)[:, :columns]

    def signed_codes(self) -> Any:
        """torch.int8 [rows, columns]: `code - 2**(bits-1)`, as runtimes with symmetric blocks (torchao, LiteRT)
        store the codes of symmetric blocks or of an asymmetric plan's symmetric part."""
        import torch

        return (self.codes.int() - 2 ** (self.scheme.bits - 1)).to(torch.int8)

    def offsets(self) -> Any:
        """[rows, blocks]: what each block adds to its symmetric part `(code - 2**(bits-1)) * scale`, i.e.
        `(2**(bits-1) - zero_point) * scale` (zeros for symmetric blocks). A runtime whose blocks are symmetric
        only (XNNPACK's) runs an asymmetric plan as its symmetric part plus the block sums of the input times
        these offsets."""
        return (2 ** (self.scheme.bits - 1) - self.zero_points) * self.scales

    def symmetric_part(self) -> QuantizedWeight:
        """The same codes and scales read as symmetric blocks, `(code - 2**(bits-1)) * scale`: what a runtime with
        symmetric blocks only stores, beside `offsets()`."""
        middle = float(2 ** (self.scheme.bits - 1))
        return QuantizedWeight(self.codes, self.scales, self.zero_points.new_full(self.zero_points.shape, middle),
                               Scheme(self.scheme.bits, self.scheme.block_size, True), self.method)


def weight_scheme(bits: int, block_size: int, symmetric: bool, zero_points: str = "integer") -> Scheme:
    """The blocks a variant's weight settings ask for: symmetric, or asymmetric with whole-code zero points
    (zero_points = "integer") or exact minimums ("float")."""
    return Scheme(bits, block_size, symmetric, zero_points == "float" and not symmetric)


def planned_by(weights: Iterable[QuantizedWeight]) -> dict[str, int]:
    """{method: weights} of the plans a format wrote, as the manifest records it (the source's own grid:
    "source")."""
    counts: dict[str, int] = {}
    for weight in weights:
        counts[weight.method] = counts.get(weight.method, 0) + 1
    return dict(sorted(counts.items()))


def as_blocks(weight: Any, block_size: int) -> Any:
    """[rows, columns] -> float [rows, blocks, block_size], the last block padded with zeros."""
    import torch

    rows, columns = weight.shape
    return torch.nn.functional.pad(weight.float(), (0, -columns % block_size)).reshape(rows, -1, block_size)


def half(values: Any) -> Any:
    """float32 values that float16 holds exactly: scales and block minimums are stored as float16, as GGUF's are."""
    return values.half().float()


def _scale(values: Any) -> Any:
    """A float16 block scale, at least float16's smallest step (an all-zero block still divides)."""
    return half(values.clamp_min(2.0 ** -24))


def block_parameters(weight: Any, scheme: Scheme) -> tuple[Any, Any]:
    """(scales, zero points), each [rows, blocks], of round-to-nearest over each block's range; scales, and the
    minimums of float-zero-point blocks, are float16 values."""
    import torch

    blocks = as_blocks(weight, scheme.block_size)
    top = 2 ** scheme.bits - 1
    middle = 2 ** (scheme.bits - 1)
    if scheme.symmetric:
        # 8 bits: the block's magnitude at +-127 (GGUF's Q8_0); 4 bits: at 7.5 steps, torchao's symmetric range
        scales = _scale(blocks.abs().amax(-1) / (middle - 1 if scheme.bits == 8 else middle - 0.5))
        return scales, torch.full_like(scales, float(middle))
    if scheme.float_zero_points:
        low = half(blocks.amin(-1))
        scales = _scale((blocks.amax(-1) - low) / top)
        return scales, -low / scales
    low, high = blocks.amin(-1).clamp_max(0), blocks.amax(-1).clamp_min(0)
    scales = _scale((high - low) / top)
    return scales, torch.round(-low / scales).clamp(0, top)


def source_grid(weight: Any, scheme: Scheme) -> QuantizedWeight | None:
    """The weight's own block grid in `scheme` where every block is on one (_source_grid_rows), else None;
    checked a slice of rows at a time, so that a float weight is turned down at its first slice."""
    return _by_rows(_source_grid_rows, weight, scheme)


def round_to_nearest(weight: Any, scheme: Scheme) -> QuantizedWeight:
    """Each block's codes by round-to-nearest over its range (block_parameters), a slice of rows at a time."""
    return _by_rows(_round_to_nearest_rows, weight, scheme)


def _by_rows(plan_rows: Callable[[Any, Scheme], QuantizedWeight | None], weight: Any,
             scheme: Scheme) -> QuantizedWeight | None:
    """A plan made of row-independent blocks, made PLAN_SLICE_WEIGHTS at a time: a 151936 x 896 output head's
    float temporaries (sorted blocks, codes, errors: several times the weight) stay a slice's, not the whole's.
    None as soon as a slice has none."""
    import torch

    rows, columns = weight.shape
    step = max(1, PLAN_SLICE_WEIGHTS // columns)
    parts = []
    for start in range(0, rows, step):
        part = plan_rows(weight[start:start + step], scheme)
        if part is None:
            return None
        parts.append(part)
    if len(parts) == 1:
        return parts[0]
    return QuantizedWeight(torch.cat([p.codes for p in parts]), torch.cat([p.scales for p in parts]),
                           torch.cat([p.zero_points for p in parts]), scheme, parts[0].method)


def _source_grid_rows(weight: Any, scheme: Scheme) -> QuantizedWeight | None:
    """The weight's own block grid in `scheme`, when every block is on one the scheme holds, else None.

    Each block is tried against the grids of llama.cpp's block types, as their quantizers lay them out: its
    magnitude at +-(2**(bits-1) - 1) (Q8_0), its signed extreme at code 0 (Q4_0: d = extreme / -8; a negative d
    is the same grid mirrored, codes 15 - q around zero point 7), and its range from minimum to maximum in
    2**bits - 1 steps (Q4_1, zero point where the minimum falls); then, for asymmetric schemes, a step found from the
    gaps between the block's values (K-quants, and 5-bit Q5_0 blocks in 8-bit ones). A symmetric scheme holds zero
    point 2**(bits-1) only, uint8 zero points whole codes, float zero points any offset."""
    import torch

    blocks = as_blocks(weight.detach(), scheme.block_size)
    top, middle = 2 ** scheme.bits - 1, 2 ** (scheme.bits - 1)
    low, high = blocks.amin(-1), blocks.amax(-1)
    extreme = torch.where(high.abs() >= low.abs(), high, low)
    step = extreme / -middle  # Q4_0's d, signed
    # whole zero points first: a float16 minimum is exact for Q4_1's blocks only (-7d of a Q4_0 block is not)
    candidates = [(extreme.abs() / (middle - 1), torch.full_like(low, float(middle))),
                  (step.abs(), torch.where(step >= 0, float(middle), float(middle - 1))),
                  ((high - low) / top, None)]
    chosen_scales = torch.zeros_like(low)
    chosen_zeros = torch.full_like(low, float(middle))
    found = low == high  # a constant block (zeros: padding, pruned rows) needs no grid
    for scales, zeros in candidates:
        scales = _scale(scales)
        zeros = -half(low) / scales if zeros is None else zeros
        if scheme.symmetric:
            holds = zeros == middle
        elif scheme.float_zero_points:
            holds = torch.ones_like(found)
        else:
            holds = (zeros - torch.round(zeros)).abs() < ON_GRID
            zeros = torch.round(zeros)
        holds &= (zeros >= 0) & (zeros <= top)
        codes = _codes(blocks, scales[..., None], zeros[..., None], scheme.bits)
        on_grid = ((codes - zeros[..., None]) * scales[..., None] - blocks).abs().amax(-1) <= ON_GRID * scales
        take = holds & on_grid & ~found
        chosen_scales = torch.where(take, scales, chosen_scales)
        chosen_zeros = torch.where(take, zeros, chosen_zeros)
        found |= take
    if not scheme.symmetric and not bool(found.all()):  # codes that need not reach the block's ends
        scales, take = _k_quant_grid(blocks, low, top)
        zeros = -low / torch.where(take, scales, 1.0)
        if not scheme.float_zero_points:  # a Q5_0 block in 8-bit blocks: a whole zero point, checked again
            zeros = torch.round(zeros)
            codes = _codes(blocks, scales[..., None], zeros[..., None], scheme.bits)
            take &= ((codes - zeros[..., None]) * scales[..., None] - blocks).abs().amax(-1) <= ON_GRID * scales
        take &= ~found
        chosen_scales = torch.where(take, scales, chosen_scales)
        chosen_zeros = torch.where(take, zeros, chosen_zeros)
        found |= take
    if not bool(found.all()):
        return None
    chosen_scales = torch.where(low == high, _scale(high.abs() / max(1, middle - 1)), chosen_scales)
    rows, columns = weight.shape
    codes = _codes(blocks, chosen_scales[..., None], chosen_zeros[..., None], scheme.bits)
    codes = codes.reshape(rows, -1)[:, :columns].to(torch.uint8)
    return QuantizedWeight(codes, chosen_scales, chosen_zeros, scheme, "source")


SOURCE_BITS = (4, 5, 6, 8)  # the grids a quantized GGUF's linears come on (Q4_*, Q5_*, Q6_K, Q8_0)
SOURCE_BITS_BLOCK = 16  # the finest block of llama.cpp's types (Q6_K's): one step each
SOURCE_BITS_SHARE = 0.999  # of the blocks: a few Q8_0 blocks have no gap a small fraction of which is their step
SOURCE_BITS_ROWS = 64  # rows looked at, evenly spaced: a GGUF type is per tensor, and most blocks reach its top code


def source_bits(weight: Any) -> int | None:
    """The fewest bits of a grid the weight already sits on (a quantized GGUF's tensor, dequantized by its
    loader): every block of 16 weights is `minimum + code * step` with codes below 2**bits. None for a float
    weight, whose blocks are not on such a grid (bfloat16 ones included: their steps differ by exponent)."""
    import torch

    rows = weight.shape[0]
    blocks = as_blocks(weight.detach()[::max(1, rows // SOURCE_BITS_ROWS)], SOURCE_BITS_BLOCK)
    low = blocks.amin(-1)
    steps, found = _grid_steps(blocks, low, 2 ** max(SOURCE_BITS) - 1, range(1, 9))
    constant = low == blocks.amax(-1)
    if float((found | constant).float().mean()) < SOURCE_BITS_SHARE:
        return None
    safe = torch.where(found, steps, 1.0)
    top = int(torch.round((blocks - low[..., None]) / safe[..., None]).amax(-1)[found].max()) if found.any() else 0
    return next(bits for bits in SOURCE_BITS if top < 2 ** bits)


def _k_quant_grid(blocks: Any, low: Any, top: int) -> tuple[Any, Any]:
    """(float16 scales, which blocks are on such a grid) for blocks of llama.cpp's K-quants (Q4_K: scale and
    minimum per 32 weights, each a 6-bit multiple of its super-block's float16 factor), whose codes need not
    reach 0 or 15. The step and the minimum are then stored as float16, as every plan's are: within 1/64 of a
    step of the source's values, the same codes."""
    steps, found = _grid_steps(blocks, low, top, (1, 2, 3))
    return _scale(steps), found


def _grid_steps(blocks: Any, low: Any, top: int, divisors: Iterable[int]) -> tuple[Any, Any]:
    """(float32 step, which blocks are on `low + code * step` with codes 0 .. top) per block: the step is the
    smallest gap between the block's values or a whole fraction of it (neighbouring codes may be missing),
    checked in float32 on every weight."""
    import torch

    values = blocks.sort(-1).values
    gaps = values.diff(dim=-1)
    span = values[..., -1] - values[..., 0]
    gaps = torch.where(gaps > 1e-6 * span[..., None], gaps, torch.inf)
    smallest = gaps.amin(-1)
    steps, found = torch.zeros_like(low), torch.zeros_like(low, dtype=torch.bool)
    for divisor in divisors:
        step = smallest / divisor
        codes = torch.round((blocks - low[..., None]) / step[..., None])
        on_grid = (codes * step[..., None] + low[..., None] - blocks).abs().amax(-1) <= ON_GRID * step
        take = torch.isfinite(step) & on_grid & (codes.amax(-1) <= top) & ~found
        steps = torch.where(take, step, steps)
        found |= take
    return steps, found


def _codes(values: Any, scales: Any, zero_points: Any, bits: int) -> Any:
    import torch

    return torch.round(values / scales + zero_points).clamp(0, 2 ** bits - 1)


def _round_to_nearest_rows(weight: Any, scheme: Scheme) -> QuantizedWeight:
    import torch

    scales, zero_points = block_parameters(weight, scheme)
    rows, columns = weight.shape
    codes = _codes(as_blocks(weight, scheme.block_size), scales[..., None], zero_points[..., None], scheme.bits)
    codes = codes.reshape(rows, -1)[:, :columns].to(torch.uint8)
    return QuantizedWeight(codes, scales, zero_points, scheme, "rtn")


def gptq(weight: Any, hessian: Any, scheme: Scheme, damping: float = GPTQ_DAMPING) -> QuantizedWeight:
    """GPTQ with act-order and static block scales; `hessian` is X^T X of the layer's calibration inputs."""
    import torch

    weight = weight.detach().float().clone()
    rows, columns = weight.shape
    h = hessian.double().clone()
    dead = torch.diag(h) == 0  # inputs that are never non-zero: their weights cannot matter
    h[dead, dead] = 1
    weight[:, dead] = 0
    scales, zero_points = block_parameters(weight, scheme)
    order = torch.argsort(torch.diag(h), descending=True)
    weight, h = weight[:, order], h[order][:, order]
    h_inverse = _upper_inverse_cholesky(h, damping)
    block_of = (order // scheme.block_size).tolist()
    codes = torch.empty(rows, columns, dtype=torch.uint8)
    for start in range(0, columns, GPTQ_COLUMNS):
        end = min(start + GPTQ_COLUMNS, columns)
        part = weight[:, start:end].clone()
        errors = torch.zeros_like(part)
        h_part = h_inverse[start:end, start:end].float()
        for i in range(end - start):
            block = block_of[start + i]
            scale, zero = scales[:, block], zero_points[:, block]
            code = _codes(part[:, i], scale, zero, scheme.bits)
            codes[:, start + i] = code.to(torch.uint8)
            error = (part[:, i] - (code - zero) * scale) / h_part[i, i]
            part[:, i:] -= error[:, None] * h_part[i, i:][None, :]
            errors[:, i] = error
        weight[:, end:] -= errors @ h_inverse[start:end, end:].float()
    codes = codes[:, torch.argsort(order)]
    return QuantizedWeight(codes, scales, zero_points, scheme, "gptq")


def _upper_inverse_cholesky(h: Any, damping: float) -> Any:
    import torch

    mean = float(torch.diag(h).mean())
    for attempt in range(6):  # a rank-deficient Hessian (few calibration tokens): more damping
        damped = h + torch.eye(len(h), dtype=h.dtype) * damping * (10 ** attempt) * mean
        factor, info = torch.linalg.cholesky_ex(damped)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(factor)
            return torch.linalg.cholesky(inverse, upper=True)
    raise RuntimeError("GPTQ: the calibration Hessian is not positive definite even with 10^5 x damping")


class _GroupGathered(Exception):
    """Raised by the last hook of a group to end the calibration forward pass early."""


class Hessians:
    """X^T X of the inputs of a group of named linears over calibration batches, gathered with forward hooks in
    one pass that ends once every linear of the group has read its input; linears that read the same tensor
    (q/k/v, gate/up) share one product."""

    def __init__(self, model: Any, paths: Iterable[str]) -> None:
        self.model, self.paths = model, list(paths)
        # first reader's path -> X^T X, float32: half of float64's bytes, and GPTQ works on it in float64
        self.products: dict[str, Any] = {}
        self.reader_of: dict[str, str] = {}  # path -> the path whose product it shares
        self.tokens = 0

    def __contains__(self, path: str) -> bool:
        return path in self.paths

    def __getitem__(self, path: str) -> Any:
        return self.products[self.reader_of[path]]

    def gather(self, batches: list[Any], progress: Callable[[str], None]) -> None:
        import torch

        modules = dict(self.model.named_modules())
        # this batch: input tensor -> (the first linear that read it, the tensor: held, so that no later tensor
        # of the same forward pass takes its address)
        first_reader: dict[tuple, tuple[str, Any]] = {}
        read: set[str] = set()  # the group's linears that have read their input in this batch

        def hook(path: str) -> Callable:
            def record(_module: Any, inputs: tuple, _output: Any) -> None:
                read.add(path)
                x = inputs[0].detach()
                key = (x.data_ptr(), tuple(x.shape), tuple(x.stride()))
                if key in first_reader:
                    self.reader_of[path] = first_reader[key][0]
                else:
                    first_reader[key] = (path, x)
                    self.reader_of[path] = path
                    rotation = getattr(_module, "rotation", None)  # a RotatedLinear's weight reads x rotated
                    flat = (x if rotation is None else rotation(x)).reshape(-1, x.shape[-1]).float()
                    if path in self.products:
                        self.products[path].addmm_(flat.T, flat)
                    else:
                        self.products[path] = flat.T @ flat
                if len(read) == len(self.paths):
                    raise _GroupGathered
            return record

        handles = [modules[p].register_forward_hook(hook(p)) for p in self.paths]
        try:
            with torch.no_grad():
                for index, batch in enumerate(batches):
                    first_reader.clear()
                    read.clear()
                    with contextlib.suppress(_GroupGathered):
                        self.model(input_ids=batch)
                    self.tokens += batch.numel()
                    if (index + 1) % max(1, len(batches) // 4) == 0 or index + 1 == len(batches):
                        progress(f"calibration: batch {index + 1}/{len(batches)}, {self.tokens} tokens")
        finally:
            first_reader.clear()
            for handle in handles:
                handle.remove()


def hessian_groups(model: Any, budget: int = HESSIAN_GROUP_BYTES) -> list[list[str]]:
    """The model's linears in module order, cut into consecutive groups whose X^T X (float32, in_features^2
    bytes each, a product shared by q/k/v counted for each: an upper bound) stay within `budget` bytes; a linear
    larger than the budget is a group of its own."""
    import torch

    groups: list[list[str]] = [[]]
    held = 0
    for name, module in model.named_modules():
        if not isinstance(module, torch.nn.Linear):
            continue
        size = 4 * module.in_features ** 2
        if groups[-1] and held + size > budget:
            groups.append([])
            held = 0
        groups[-1].append(name)
        held += size
    return [group for group in groups if group]


class Planner:
    """Each linear's plan for a (scheme, method), computed once per export and shared by every format that
    writes it: the weight's own grid when it is on one the scheme holds (source_grid), else the method's codes;
    GPTQ's Hessians are gathered on the first GPTQ plan that needs them, one group of linears at a time
    (hessian_groups): the group of the linear asked for replaces the one held."""

    def __init__(self, model: Any, calibration: Callable[[], list[Any]], progress: Callable[[str], None],
                 hessian_bytes: int = HESSIAN_GROUP_BYTES) -> None:
        self.model, self.calibration, self.progress = model, calibration, progress
        self.hessian_bytes = hessian_bytes
        self.plans: dict[tuple[str, Scheme, str], QuantizedWeight] = {}
        self.modules = dict(model.named_modules())
        self.hessians: Hessians | None = None  # the group held
        self.groups: list[list[str]] | None = None
        self.seconds: dict[str, float] = {}  # step -> seconds (calibration, gptq, rtn)

    def weight(self, path: str, scheme: Scheme, method: str) -> QuantizedWeight:
        import time

        key = (path, scheme, method)
        if key not in self.plans:
            weight = self.modules[path].weight.detach()
            begun, calibrated = time.perf_counter(), self.seconds.get("calibration", 0.0)
            if (own := source_grid(weight, scheme)) is not None:
                self.plans[key] = own
            elif method == "gptq":
                self.plans[key] = gptq(weight, self._hessians(path)[path], scheme)
            elif method == "rtn":
                self.plans[key] = round_to_nearest(weight, scheme)
            else:
                raise ValueError(f"no PyTorch plan for method {method!r}; choose one of {', '.join(METHODS)}")
            done = self.plans[key].method  # "source" where the weight kept its own grid
            took = time.perf_counter() - begun - (self.seconds.get("calibration", 0.0) - calibrated)
            self.seconds[done] = self.seconds.get(done, 0.0) + took  # the calibration a plan waited for apart
        return self.plans[key]

    def _hessians(self, path: str) -> Hessians:
        import time

        if self.hessians is not None and path in self.hessians:
            return self.hessians
        self.hessians = None  # before the next group is gathered: one group held at a time
        if self.groups is None:
            self.groups = hessian_groups(self.model, self.hessian_bytes)
        begun = time.perf_counter()
        index = next(i for i, group in enumerate(self.groups) if path in group)
        group = self.groups[index]
        batches = self.calibration()
        of = f", group {index + 1} of {len(self.groups)}" if len(self.groups) > 1 else ""
        self.progress(f"gptq: gathering the inputs of {len(group)} linears{of} on "
                      f"{sum(b.numel() for b in batches)} calibration tokens")
        self.hessians = Hessians(self.model, group)
        self.hessians.gather(batches, self.progress)
        self.seconds["calibration"] = self.seconds.get("calibration", 0.0) + time.perf_counter() - begun
        return self.hessians


def source_grid_note(planner: Planner, body: list[str], scheme: Scheme | None, planned: dict[str, int],
                     setting: str | None) -> str | None:
    """What became of a source already on a block grid (a quantized GGUF): how many weights kept their codes,
    and, where the decoder linears' scheme cannot hold their grid but float zero points would, the `setting`
    that keeps them (None: the format has no such blocks)."""
    notes = []
    if planned.get("source"):
        notes.append(f"{planned['source']} of {sum(planned.values())} weights kept the source's own block grid "
                     "(codes, scales and zero points found again, no second quantization)")
    if body and scheme is not None and scheme.bits == 4 and not scheme.float_zero_points:
        weight = planner.modules[body[0]].weight
        if source_grid(weight, scheme) is None and \
                source_grid(weight, Scheme(4, scheme.block_size, False, True)) is not None:
            notes.append("the decoder linears are on a grid with exact minimums (GGUF Q4_1): " +
                         (f"{setting} keeps them instead of quantizing them a second time" if setting else
                          "this format's blocks cannot hold it, so they are quantized a second time"))
    return "; ".join(notes) or None


def calibration_batches(ids: list[int], window: int, count: int, minimum: int) -> list[Any]:
    """`count` consecutive windows of the calibration text's token ids, refused below `minimum` windows."""
    import torch

    available = len(ids) // window
    if available < minimum:
        raise UserInputError(f"the calibration text has {len(ids)} tokens, fewer than the {minimum} windows of "
                             f"{window} tokens GPTQ and smoothing need; pass a longer calibration text, or use "
                             "method = \"rtn\" and smoothing = 0")
    usable = min(count, available)
    tensor = torch.tensor(ids[:usable * window], dtype=torch.long).reshape(usable, window)
    return list(tensor.split(4))
