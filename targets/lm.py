"""Language-model targets as plain data: the precision rows, their default budgets, and the [lm] table.

A target file with an [lm] table is a language-model target (targets/android-llm.toml): its variants
are LM precisions, judged at the token level (validators/lm). No torch here, so `edgeport targets`
lists these without importing a heavy library.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

from common.errors import TargetError
from devices import device_list
from targets.catalog import artifact_filename
from targets.prune import PruneRules, PruneSettings, prune_profile, read_prune


@dataclass(frozen=True)
class LmBudget:
    """Token-level limits one language-model artifact must meet. None means "not checked"."""

    max_abs: float | None = None  # largest |logit difference| on the free-running prompts before they diverge
    min_greedy_tokens: int | None = None  # every prompt's greedy tokens equal to the reference's for this many
    max_ppl_ratio: float | None = None  # artifact perplexity / reference perplexity on the eval text
    max_kl_mean: float | None = None  # mean KL(reference || artifact) of the next-token distributions
    max_kl_p99: float | None = None
    min_top1_agreement: float | None = None  # share of eval positions with the same most likely next token
    # per prompt, the share of the reference's greedy tokens the artifact predicts when fed that text one token
    # per decode call (validators/lm/metrics.py forced_decoding)
    min_decode_top1_agreement: float | None = None
    max_repetition_increase: float | None = None  # artifact's repeated 3-gram rate minus the reference's
    # the window as long as the KV cache (validators/lm/validate.py long_context); None: the short windows' limit
    max_long_ppl_ratio: float | None = None
    max_long_kl_mean: float | None = None
    min_long_top1_agreement: float | None = None
    max_size_mb: float | None = None
    # the artifact's bytes / the source's float32 weights' bytes (llama.cpp's Q4_K_M of SmolLM2-135M: 0.19); auto
    # precision keeps no more layers at higher precision than this leaves room for
    max_bytes_ratio: float | None = None
    # estimates on the target's devices (validators/estimate.py), never measurements: the slowest device's decode
    # at a full cache, and the weights + KV cache floor of peak memory (each device's app limit applies as well)
    min_est_decode_tokens_per_s: float | None = None
    max_est_peak_memory_mb: float | None = None

    def merged(self, overrides: dict[str, Any]) -> LmBudget:
        return dataclasses.replace(self, **overrides)

    def limits(self) -> dict[str, float]:
        return {k: v for k, v in vars(self).items() if v is not None}


# fp32 must generate what PyTorch generates; quantized variants are judged as llama.cpp's perplexity
# tool judges a quantization (PPL ratio, KL, same top-1), plus the repetition check perplexity misses.
# For scale, llama.cpp's LLaMA-3-8B: q8_0 KLD 0.0014 / 97.7% same top-1; q4_K_M +2.8% PPL, KLD 0.031, 91.9%.
# The decode agreement sits a little below the teacher-forced top-1 budget: a prompt gives only new_tokens
# positions (32 by default, 3 points each), where the eval text gives hundreds.
LM_FP32_BUDGET = LmBudget(max_abs=1e-3, min_greedy_tokens=32, max_ppl_ratio=1.001, min_top1_agreement=0.99)
LM_FP16_BUDGET = LmBudget(max_ppl_ratio=1.01, max_kl_mean=0.005, min_top1_agreement=0.97,
                          min_decode_top1_agreement=0.9, max_repetition_increase=0.1)
LM_W8_BUDGET = LmBudget(max_ppl_ratio=1.03, max_kl_mean=0.02, max_kl_p99=0.3, min_top1_agreement=0.93,
                        min_decode_top1_agreement=0.85, max_repetition_increase=0.15)
LM_W4_BUDGET = LmBudget(max_ppl_ratio=1.15, max_kl_mean=0.12, max_kl_p99=1.5, min_top1_agreement=0.80,
                        min_decode_top1_agreement=0.7, max_repetition_increase=0.15)

# rtn and gptq: computed in PyTorch (exporter/quant/plan.py); k_quant and hqq: onnxruntime's own quantizers
WEIGHT_METHODS = ("rtn", "gptq", "k_quant", "hqq")
ZERO_POINTS = ("integer", "float")
BUILDERS = ("auto", "export")  # auto: onnxruntime-genai's model builder where it knows the architecture
BLOCK_SIZES = (16, 32, 64, 128, 256)
EMBEDDING_BITS = (4, 8, 32)  # 32: float
SMOOTHING_ALPHAS = (0.0, 0.5, 0.6, 0.7, 0.8)  # SmoothQuant's alpha (exporter/quant/smooth.py); 0: off
ROTATION_BLOCKS = (0, 16, 32, 64, 128)  # Hadamard block of exporter/quant/rotate.py; 0: off
RECOVERY_STEPS = (0, 25, 50, 100, 200, 400)  # self-distillation steps of exporter/quant/recover.py; 0: off
SOURCE_PRECISIONS = ("keep", "variant")
# What each weight-quantization setting means; a precision row lists the ones its export reads (`reads`).
WEIGHT_SETTINGS = {
    "block_size": ("weights per quantization block of 4-bit weights (and of ONNX's 8-bit ones)", BLOCK_SIZES),
    "method": ("how weights are rounded: rtn (round to nearest), gptq (calibrated: rounding error pushed onto the "
               "weights not yet rounded), k_quant, hqq", WEIGHT_METHODS),
    "zero_points": ("asymmetric 4-bit blocks' zero points: whole codes (integer) or exact minimums (float: GGUF "
                    "Q4_1's scale and minimum, which keeps a Q4_1 source's own blocks; ~2x slower decode in ONNX)",
                    ZERO_POINTS),
    "embedding_bits": ("bits of the embedding table and output head of a 4-bit variant", EMBEDDING_BITS),
    "symmetric": ("4-bit blocks without zero points", (True, False)),
    "smoothing": ("SmoothQuant alpha for variants with int8 activations: outlier input channels migrated into the "
                  "weights, folded into the preceding norms (exact in float, calibrated); 0: off", SMOOTHING_ALPHAS),
    "rotation": ("Hadamard block (channels) rotating the inputs of int8-activation linears and the head: weights "
                 "stored rotated, inputs rotated in float in the graph (exact in float); 0: off", ROTATION_BLOCKS),
    "recovery": ("steps of self-distillation learning the 4-bit plan's block scales against the float model's own "
                 "next-token distributions on calibration text (codes kept); 0: off", RECOVERY_STEPS),
    "source_precision": ("keep: a decoder linear its source already holds on a grid of more bits than the variant's "
                         "(a Q4_K_M GGUF's Q5_0, Q6_K and Q8_0 tensors) stays at 8 bits, on its own grid where 8-bit "
                         "blocks hold it, as llama.cpp mixes bits per tensor; variant: every linear at the variant's "
                         "bits", SOURCE_PRECISIONS),
    "builder": ("who builds ONNX w4: onnxruntime-genai's builder where it can (auto) or edgeport (export)",
                BUILDERS),
}
PLANNED = {"method": ("rtn", "gptq")}  # the export writes the PyTorch weight plan's codes (exporter/quant/plan.py)
SMOOTHED = {"smoothing": SMOOTHING_ALPHAS}  # int8 activations quantized per token at run time
# a rotated linear stays an nn.Linear whose weight torchao and ai-edge-quantizer take as planned; ONNX picks its
# MatMuls by module path (the rotation's would be taken too), Core ML's activations are float
ROTATED = {"rotation": ROTATION_BLOCKS}
RECOVERED = {"recovery": RECOVERY_STEPS}  # learned scales of a 4-bit plan
SOURCE_KEPT = {"source_precision": SOURCE_PRECISIONS}  # 4-bit variants keep a finer source grid at 8 bits
# torchao's int4 groups go to XNNPACK, which takes multiples of 32; ai-edge-quantizer has no 16-weight blocks
BLOCKS_OF_32 = {"block_size": (32, 64, 128, 256)}


@dataclass(frozen=True)
class LmPrecision:
    format: str
    id: str
    description: str
    bits: int | None  # weight bits of the decoder linears; None: float
    budget: LmBudget
    symmetric: bool | None = None  # the weight blocks' scheme; None: as the target's [lm] symmetric says (ONNX)
    activations: str = "float"  # what the quantized matmuls compute in: "float", or "int8" (quantized at run time)
    # the WEIGHT_SETTINGS the export reads, each with the values the format can do; any other is refused at load
    reads: dict[str, tuple] = dataclasses.field(default_factory=dict)

    @property
    def quantized(self) -> bool:
        return self.bits is not None


LM_PRECISION_ROWS: tuple[LmPrecision, ...] = (
    LmPrecision("onnx", "fp32", "float32 decode step with a fixed-length KV cache", None, LM_FP32_BUDGET),
    LmPrecision("onnx", "fp16", "float16 weights and compute, float32 logits and cache I/O", None, LM_FP16_BUDGET),
    LmPrecision("onnx", "w8", "8-bit block-wise weights of every decoder linear (MatMulNBits), activations "
                "quantized to int8 per block at run time (accuracy level 4)", 8, LM_W8_BUDGET, activations="int8",
                # onnxruntime's k_quant writes 4-bit blocks whatever the bits asked
                reads={"block_size": BLOCK_SIZES} | PLANNED | SMOOTHED),
    LmPrecision("onnx", "w4", "4-bit block-wise weights of every decoder linear (MatMulNBits, int8 activation "
                "compute: accuracy level 4); embedding table and output head at the target's embedding_bits (8 by "
                "default)", 4, LM_W4_BUDGET, activations="int8",
                reads={k: values for k, (_, values) in WEIGHT_SETTINGS.items() if k not in ROTATED}),
    LmPrecision("executorch", "fp32", "float32 decode step with a fixed-length KV cache, XNNPACK", None,
                LM_FP32_BUDGET),
    LmPrecision("executorch", "a8w8", "int8 per-channel weights, int8 dynamic activations (torchao, XNNPACK "
                "qd8-f32-qc8w); embedding (ExecuTorch's quantized lookup) and head int8", 8, LM_W8_BUDGET,
                symmetric=True, activations="int8", reads=PLANNED | SMOOTHED | ROTATED),
    LmPrecision("executorch", "a8w4", "int4 weights in blocks of block_size, int8 dynamic activations (torchao "
                "8da4w, XNNPACK; asymmetric blocks add their offsets as an int8 matmul of block means); "
                "embedding (quantized lookup) and head at embedding_bits", 4, LM_W4_BUDGET, activations="int8",
                reads=PLANNED | BLOCKS_OF_32 | SMOOTHED | RECOVERED | SOURCE_KEPT | {
                    k: WEIGHT_SETTINGS[k][1] for k in ("embedding_bits", "symmetric", "zero_points")}),
    LmPrecision("tflite", "fp32", "float32 prefill and decode signatures over a fixed-length KV cache (litert-torch)",
                None, LM_FP32_BUDGET),
    LmPrecision("tflite", "a8w8", "int8 channel-wise weights (the weight plan's codes), int8 dynamic activations "
                "(ai-edge-quantizer's dynamic layout, XNNPACK); embedding and head too", 8, LM_W8_BUDGET,
                symmetric=True, activations="int8", reads=PLANNED | SMOOTHED | ROTATED),
    LmPrecision("tflite", "a8w4", "int4 weights in blocks of block_size (the weight plan's codes), int8 dynamic "
                "activations (ai-edge-quantizer's dynamic layout, XNNPACK; asymmetric blocks add their offsets as an "
                "int8 matmul of block means); embedding (symmetric blocks) and head at embedding_bits (a tied head "
                "reads the embedding's tensor, except 4-bit asymmetric blocks)", 4, LM_W4_BUDGET, activations="int8",
                reads=PLANNED | BLOCKS_OF_32 | SMOOTHED | RECOVERED | SOURCE_KEPT | {"embedding_bits": (4, 8)} | {
                    k: WEIGHT_SETTINGS[k][1] for k in ("symmetric", "zero_points")}),
    LmPrecision("coreml", "fp16", "stateful ML Program (iOS18), float16, the KV cache in Core ML states", None,
                LM_FP16_BUDGET),
    LmPrecision("coreml", "w8", "stateful ML Program, int8 per-channel weights of every linear, the embedding table "
                "in int8 blocks of block_size (the weight plan's codes)", 8, LM_W8_BUDGET, symmetric=True,
                reads=PLANNED | {"block_size": BLOCK_SIZES}),
    LmPrecision("coreml", "w4", "stateful ML Program, 4-bit weights of every linear in blocks of block_size, the "
                "embedding table and head at embedding_bits (the weight plan's codes)", 4, LM_W4_BUDGET,
                reads=PLANNED | RECOVERED | SOURCE_KEPT | {k: WEIGHT_SETTINGS[k][1] for k in (
                    "block_size", "embedding_bits", "symmetric", "zero_points")}),
)
LM_PRECISIONS: dict[str, dict[str, LmPrecision]] = {}
for _row in LM_PRECISION_ROWS:
    LM_PRECISIONS.setdefault(_row.format, {})[_row.id] = _row


@dataclass(frozen=True)
class LmSettings:
    """How a language model is exported and judged ([lm] in a target file)."""

    cache_length: int = 256  # the fixed KV-cache length: prompt plus generated tokens must fit
    prefill_length: int = 64  # the longest prompt chunk one prefill call takes
    new_tokens: int = 32  # greedy tokens generated per prompt
    prompts: tuple[str, ...] = ()  # empty: the model's default prompts (or prompts_file's lines)
    eval_windows: int = 8  # teacher-forced windows of the eval text
    window_length: int = 64
    block_size: int = 32  # block-wise weight quantization
    method: str = "rtn"  # WEIGHT_METHODS
    zero_points: str = "integer"  # ZERO_POINTS
    calibration_windows: int = 64  # windows of window_length calibration tokens GPTQ gathers its Hessians on
    builder: str = "auto"  # BUILDERS
    embedding_bits: int = 8  # the embedding table and the output head (tied or not) of 4-bit variants
    smoothing: float = 0.0  # SMOOTHING_ALPHAS: SmoothQuant's alpha for int8-activation variants; 0: off
    rotation: int = 0  # ROTATION_BLOCKS: Hadamard block rotating int8-activation inputs; 0: off
    recovery: int = 0  # RECOVERY_STEPS: self-distillation steps learning a 4-bit plan's scales; 0: off
    source_precision: str = "keep"  # SOURCE_PRECISIONS: a finer source grid (Q5_0, Q6_K, Q8_0) kept at 8 bits
    symmetric: bool = False  # 4-bit blocks without zero points (onnxruntime-genai's builder takes only these)
    blame_windows: int = 1  # eval windows the per-layer blame measures on (it runs once per decoder linear)
    diagnose: str = "always"  # per-layer blame of quantized variants: "always", "on-failure", "off"

    def check(self, origin: str) -> None:
        def fail(message: str) -> None:
            raise TargetError(f"{origin}: [lm] {message}")

        for key in ("cache_length", "prefill_length", "new_tokens", "eval_windows", "window_length", "block_size",
                    "blame_windows", "calibration_windows"):
            value = getattr(self, key)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                fail(f"{key} must be a whole number >= 1, got {value!r}")
        if self.block_size not in (16, 32, 64, 128, 256):
            fail(f"block_size {self.block_size}; choose one of 16, 32, 64, 128, 256")
        if self.method not in WEIGHT_METHODS:
            fail(f"method {self.method!r}; choose one of: {', '.join(WEIGHT_METHODS)}")
        if self.zero_points not in ZERO_POINTS:
            fail(f"zero_points {self.zero_points!r}; choose one of: {', '.join(ZERO_POINTS)}")
        if self.builder not in BUILDERS:
            fail(f"builder {self.builder!r}; choose one of: {', '.join(BUILDERS)}")
        if not isinstance(self.symmetric, bool):
            fail("symmetric must be true or false")
        if self.diagnose not in ("always", "on-failure", "off"):
            fail(f"diagnose {self.diagnose!r}; choose one of: always, on-failure, off")
        if self.smoothing not in SMOOTHING_ALPHAS or isinstance(self.smoothing, bool):
            fail(f"smoothing {self.smoothing!r}; choose one of: {', '.join(map(str, SMOOTHING_ALPHAS))}")
        if self.rotation not in ROTATION_BLOCKS or isinstance(self.rotation, bool):
            fail(f"rotation {self.rotation!r}; choose one of: {', '.join(map(str, ROTATION_BLOCKS))}")
        if self.recovery not in RECOVERY_STEPS or isinstance(self.recovery, bool):
            fail(f"recovery {self.recovery!r}; choose one of: {', '.join(map(str, RECOVERY_STEPS))}")
        if self.source_precision not in SOURCE_PRECISIONS:
            fail(f"source_precision {self.source_precision!r}; choose one of: {', '.join(SOURCE_PRECISIONS)}")
        if self.embedding_bits not in (4, 8, 32):
            fail(f"embedding_bits {self.embedding_bits}; choose 4, 8 or 32 (float)")
        if self.prefill_length > self.cache_length or self.window_length > self.cache_length:
            fail("prefill_length and window_length must fit in cache_length")
        if self.new_tokens >= self.cache_length:
            fail("new_tokens must be smaller than cache_length")


def lm_settings(table: Any, origin: str) -> LmSettings:
    if not isinstance(table, dict):
        raise TargetError(f"{origin}: [lm] must be a table")
    names = [f.name for f in dataclasses.fields(LmSettings)] + ["prompts_file"]
    unknown = sorted(set(table) - set(names))
    if unknown:
        raise TargetError(f"{origin}: unknown key {unknown[0]!r} in [lm]; valid keys: {', '.join(names)}")
    values = dict(table)
    if "prompts_file" in values:  # one prompt per line, relative to the target file; read here, stored as prompts
        if "prompts" in values:
            raise TargetError(f"{origin}: [lm] takes prompts or prompts_file, not both")
        path = Path(origin).parent / str(values.pop("prompts_file"))
        try:
            values["prompts"] = [line for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, UnicodeDecodeError) as exc:
            raise TargetError(f"{origin}: [lm] prompts_file {path} cannot be read ({exc}); one prompt per line") \
                from None
    if "prompts" in values:
        prompts = values["prompts"]
        if not isinstance(prompts, list) or not all(isinstance(p, str) and p for p in prompts):
            raise TargetError(f"{origin}: [lm] prompts must be a list of non-empty strings")
        values["prompts"] = tuple(prompts)
    settings = LmSettings(**values)
    settings.check(origin)
    return settings


def budget_overrides(overrides: Any, where: str, origin: str) -> dict[str, float]:
    if not isinstance(overrides, dict):
        raise TargetError(f"{origin}: {where} must be a table of limits")
    names = [f.name for f in dataclasses.fields(LmBudget)]
    for key, value in overrides.items():
        if key not in names:
            raise TargetError(f"{origin}: unknown key {key!r} in {where}; valid keys: {', '.join(names)}")
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise TargetError(f"{origin}: {where}.{key} must be a number, got {value!r}")
    return dict(overrides)


@dataclass(frozen=True)
class LmVariant:
    format: str
    precision: str
    budget: LmBudget
    settings: LmSettings = LmSettings()  # the target's [lm] with this variant's weight settings resolved

    @property
    def row(self) -> LmPrecision:
        return LM_PRECISIONS[self.format][self.precision]

    @property
    def filename(self) -> str:
        return artifact_filename(self.format, self.precision)


@dataclass(frozen=True)
class LmTarget:
    """A language-model target: what to emit, how to export it, and how each artifact is judged."""

    kind: ClassVar[str] = "causal-lm"  # the model-kind plug-in that exports it (exporter/kinds/)
    name: str
    description: str
    variants: tuple[LmVariant, ...]
    lm: LmSettings
    threads: int = 1  # runtime threads for the speed figures (decode is measured as a device runs it)
    auto_precision: bool = False  # keep the most harmful decoder linears at 8 bits until a variant passes
    devices: tuple[str, ...] = ()  # device profiles (devices/) the report estimates speed and memory for
    prune: PruneSettings | None = None  # [prune]: decoder layers removed before lowering, then distilled
    origin: str = ""
    prune_rules: ClassVar[PruneRules]  # LM_PRUNE_RULES, set below

    @property
    def formats(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(v.format for v in self.variants))

    @property
    def needs_calibration(self) -> bool:
        """A variant computes its weights from calibration text (method = "gptq", smoothing or recovery), or pruning
        distils the pruned model on it."""
        return self.prune is not None or any(v.settings.method == "gptq" or v.settings.smoothing or v.settings.recovery
                                             for v in self.variants)

    def to_profile(self) -> dict[str, Any]:
        profile = {"name": self.name, "description": self.description, "auto_precision": self.auto_precision,
                   "runtime": {"threads": self.threads}, "devices": list(self.devices),
                   # the weight settings as each variant resolved them, not as the [lm] table gave them
                   "lm": {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self.lm).items()
                          if k not in WEIGHT_SETTINGS},
                   "variants": [{"format": v.format, "precision": v.precision, "budget": v.budget.limits()} |
                                {k: getattr(v.settings, k) for k in v.row.reads} for v in self.variants]}
        return profile | ({"prune": prune_profile(self.prune)} if self.prune else {})


def lm_target_from_dict(data: dict[str, Any], origin: str) -> LmTarget:
    allowed = ["name", "description", "runtime", "lm", "budgets", "variants", "auto_precision", "devices", "prune"]
    unknown = sorted(set(data) - set(allowed))
    if unknown:
        raise TargetError(f"{origin}: unknown key {unknown[0]!r} in a language-model target; valid keys: "
                          f"{', '.join(allowed)}")
    name = data.get("name")
    if not isinstance(name, str) or not name:
        raise TargetError(f"{origin}: the target needs a name, e.g. name = \"my-phone-llm\"")
    auto_precision = data.get("auto_precision", False)
    if not isinstance(auto_precision, bool):
        raise TargetError(f"{origin}: auto_precision must be true or false")
    runtime = data.get("runtime", {})
    if not isinstance(runtime, dict) or set(runtime) - {"threads"}:
        raise TargetError(f"{origin}: [runtime] of a language-model target takes only threads")
    threads = runtime.get("threads", 1)
    if isinstance(threads, bool) or not isinstance(threads, int) or threads < 1:
        raise TargetError(f"{origin}: runtime.threads must be a whole number >= 1")
    common = budget_overrides(data.get("budgets", {}), "[budgets]", origin)
    table = data.get("variants")
    if not isinstance(table, list) or not table:
        raise TargetError(f"{origin}: the target needs at least one [[variants]] table with format and precision")
    lm_table = data.get("lm", {})
    settings = lm_settings(lm_table, origin)
    variants = []
    for index, entry in enumerate(table):
        where = f"variants[{index}]"
        if not isinstance(entry, dict) or set(entry) - {"format", "precision", "budget", *WEIGHT_SETTINGS}:
            raise TargetError(f"{origin}: {where} takes format, precision, budget and the weight settings it reads "
                              f"({', '.join(WEIGHT_SETTINGS)})")
        fmt, precision_id = entry.get("format"), entry.get("precision")
        if fmt not in LM_PRECISIONS:
            raise TargetError(f"{origin}: {where}.format {fmt!r}: language models export to "
                              f"{', '.join(LM_PRECISIONS)}")
        if precision_id not in LM_PRECISIONS[fmt]:
            raise TargetError(f"{origin}: {where}.precision {precision_id!r} is not a language-model precision for "
                              f"{fmt}; choose one of: {', '.join(LM_PRECISIONS[fmt])}")
        row = LM_PRECISIONS[fmt][precision_id]
        budget = row.budget.merged(common | budget_overrides(entry.get("budget", {}), f"{where}.budget", origin))
        if any(v.precision == precision_id and v.format == fmt for v in variants):
            raise TargetError(f"{origin}: variant {fmt}/{precision_id} is listed twice")
        resolved = _weight_settings(row, entry, lm_table, settings, f"{origin}: {where} ({fmt} {precision_id})")
        if resolved.get("recovery") and resolved.get("method") not in PLANNED["method"]:
            raise TargetError(f"{origin}: {where} ({fmt} {precision_id}): recovery learns the scales of a PyTorch "
                              f"weight plan; method {resolved['method']!r} has none: use method = \"gptq\" or \"rtn\"")
        unread = {k: getattr(LmSettings, k) for k in WEIGHT_SETTINGS}  # defaults, so equal variants compare equal
        variants.append(LmVariant(fmt, precision_id, budget, dataclasses.replace(settings, **unread | resolved)))
    _refuse_unread_settings(lm_table, variants, origin)
    return LmTarget(name=name, description=str(data.get("description", "")), variants=tuple(variants),
                    lm=settings, threads=threads, auto_precision=auto_precision,
                    devices=device_list(data.get("devices", []), origin),
                    prune=read_prune(data.get("prune"), origin, LM_PRUNE_RULES), origin=origin)


# a language model loses whole decoder layers (width pruning of its feed-forward blocks is not built); steps are
# layers, so step and round_to are not read. Distillation windows are short and few, so its steps are fewer and
# smaller than an image model's. The budget is what the pruned artifacts may cost in perplexity against the unpruned
# model: pruning is a trade the user sets; 1.5 flags a pruning that broke the model (SmolLM2-135M, 6 of 30 layers
# removed: ratio 1.95 before distillation, 1.20 after 15 minutes of it)
LM_PRUNE_RULES = PruneRules(
    PruneSettings(units="layers", max_pruned=0.5, recovery_steps=300, max_recovery_seconds=900.0,
                  learning_rate=1e-4, batch=8, budget=LmBudget(max_ppl_ratio=1.5)),
    units=("layers",), budget_keys=("max_ppl_ratio",),
    unread={"max_macs_ratio": "a language model's multiply-accumulates per token follow its parameters: use "
                              "max_params_ratio",
            "max_latency_ms": "a language model's pruning is not gated on measured latency yet: use max_params_ratio",
            "step": "a language model loses one whole layer a step", "round_to": "whole layers are removed"})
LmTarget.prune_rules = LM_PRUNE_RULES


def _accepts(values: tuple, value: Any) -> bool:
    return any(type(value) is type(v) and value == v for v in values)  # true is not 1


def _shown(values: tuple) -> str:
    return ", ".join(str(v).lower() if isinstance(v, bool) else repr(v) for v in values)


def _weight_settings(row: LmPrecision, entry: dict, lm_table: dict, settings: LmSettings, where: str) -> dict:
    """The weight settings this variant reads: its own entry's, else the [lm] table's, else the default (or the
    one value the format can do). A value the format cannot do, or a setting it does not read, is refused."""
    resolved = {}
    for key in WEIGHT_SETTINGS:
        accepted = row.reads.get(key)
        if key in entry and accepted is None:
            reads = ", ".join(row.reads) or "none of them"
            raise TargetError(f"{where}: this variant does not read {key} ({WEIGHT_SETTINGS[key][0]}); drop it (it "
                              f"reads: {reads})")
        if accepted is None:
            continue
        if key in entry:
            value, said = entry[key], f"{key} = {_shown((entry[key],))}"
        elif key in lm_table:
            value, said = lm_table[key], f"[lm] {key} = {_shown((lm_table[key],))}"
        else:
            default = getattr(settings, key)
            resolved[key] = default if _accepts(accepted, default) else accepted[0]
            continue
        if not _accepts(accepted, value):
            fix = "change it" if key in entry else "move it from [lm] to the [[variants]] entries that can do it"
            raise TargetError(f"{where} cannot do {said}; it takes {_shown(accepted)}: {fix}")
        resolved[key] = value
    return resolved


def _refuse_unread_settings(lm_table: dict, variants: list[LmVariant], origin: str) -> None:
    for key in WEIGHT_SETTINGS:
        if key in lm_table and not any(key in v.row.reads for v in variants):
            readers = [f"{r.format} {r.id}" for r in LM_PRECISION_ROWS if key in r.reads]
            raise TargetError(f"{origin}: [lm] {key} ({WEIGHT_SETTINGS[key][0]}) is read by none of this target's "
                              f"variants; drop it (the variants that read it: {', '.join(readers)})")
