"""Structured pruning before lowering ([prune] in a target), a step at a time until every limit of the table holds
(MACs, parameters, or the target's first variant lowered and timed with its own runtime), then distillation of the
pruned model from the unpruned one on the calibration data (no labels). Two kinds of units:

- channels (default): output channels of convolutions (their BatchNorm, depthwise groups and consumers with them),
  widths of linears and whole heads of attention blocks (query, key, value and the output projection's input
  together), kept consistent by torch-pruning's dependency graph, ranked by first-order Taylor
  importance (|weight x gradient| over a unit's coupled weights) of the loss against the unpruned model's own top-1
  where the first output is a classifier, else by activation x weight magnitude on a calibration batch;
- layers: whole blocks of the model's stack of identical blocks, the one whose removal moves the outputs least
  (measured on a calibration batch) first.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np

from exporter.errors import UserInputError
from exporter.options import Progress
from targets.prune import PruneSettings

DISTILLATION_TEMPERATURE = 2.0  # softened classifier outputs carry the teacher's ranking of the other classes
CURVE_POINTS = 30  # distillation loss values kept for the report
HELD_OUT_SHARE = 5  # one calibration row in this many judges the distillation instead of training it
HELD_OUT_BATCHES = 4  # and at most this many batches of them: each check runs them (SmolLM2: 102 windows, 13 s)
MIN_HELD_OUT_SAMPLES = 20
NEXT_TOKEN = "next_token"  # the output kind of a language model's logits [batch, positions, vocabulary]
# the unpruned model's outputs on every calibration row are kept when they fit here (an image model's); a language
# model's are computed on each batch (64 windows x 64 positions x a 49k vocabulary are 0.8 GB)
TEACHER_CACHE_BYTES = 256 * 2**20


@dataclasses.dataclass
class Pruned:
    module: Any  # the pruned and recovered model, eval mode
    section: dict  # the manifest's "pruning" section


def _tensors(arrays: dict[str, np.ndarray], names: list[str], rows: Any = None) -> tuple:
    import torch

    return tuple(torch.from_numpy(np.ascontiguousarray(arrays[n] if rows is None else arrays[n][rows])) for n in names)


def _outputs(module: Any, args: tuple) -> list:
    from exporter.trace import flatten_outputs

    return list(flatten_outputs(module(*args)))


def _size(module: Any, example: tuple) -> tuple[float, int]:
    import torch_pruning as tp

    macs, params = tp.utils.count_ops_and_params(module, example)
    return float(macs), int(params)


HEAD_ATTRIBUTES = ("num_attention_heads", "num_heads", "n_heads", "num_key_value_heads")


def _attention_blocks(module: Any) -> list:
    """The innermost modules that keep a head count: attention blocks, whose projections' widths are heads x head
    size (MPNet's encoder keeps one too, for the position bias its layers share; its feed-forward blocks are not
    attention's)."""
    counting = [block for block in module.modules() if any(isinstance(getattr(block, a, None), int)
                                                            for a in HEAD_ATTRIBUTES)]
    return [block for block in counting if not any(inner is not block and inner in counting
                                                   for inner in block.modules())]


def _attention_layers(module: Any) -> list:
    """The linears inside attention blocks: their widths are heads x head size, which the blocks' reshapes read, so
    they lose whole heads (_AttentionHeads) or nothing."""
    import torch

    return list({id(inner): inner for block in _attention_blocks(module) for inner in block.modules()
                 if isinstance(inner, torch.nn.Linear)}.values())


def _graph(module: Any, example: tuple) -> Any:
    import torch_pruning as tp

    return tp.DependencyGraph().build_dependency(module, example_inputs=example)


class _AttentionHeads:
    """Each attention block's query, key and value projections (the linears whose output channels one pruning group
    couples with the output projection's input), their head count and head size; after a step each block's own head
    count and width follow its projections, as the blocks' reshapes (BERT's and MPNet's) read them."""

    def __init__(self, module: Any, example: tuple) -> None:
        import torch

        graph = _graph(module, example)
        names = {m: name for name, m in module.named_modules()}
        self.blocks: list[tuple[str, str, int]] = []  # (block, a projection, head size), by name: copies follow
        self.counts: dict[Any, int] = {}  # projection -> heads, as torch-pruning's num_heads takes them
        for block in _attention_blocks(module):
            count = next(getattr(block, a) for a in HEAD_ATTRIBUTES if isinstance(getattr(block, a, None), int))
            first = next((m for m in block.modules() if isinstance(m, torch.nn.Linear)), None)
            if first is None or first in self.counts:
                continue
            group = graph.get_pruning_group(first, graph.get_pruner_of_module(first).prune_out_channels, idxs=[0])
            projections = [dep.target.module for dep, _ in group if isinstance(dep.target.module, torch.nn.Linear)
                           and graph.is_out_channel_pruning_fn(dep.handler)]
            widths, own = {p.out_features for p in projections}, set(block.modules())
            # kept: grouped key/value heads, or heads coupled across blocks (MPNet's position bias, shared by its
            # layers, is added to every layer's scores)
            if len(projections) < 3 or len(widths) != 1 or widths.pop() % count or not own.issuperset(projections):
                continue
            self.blocks.append((names[block], names[first], first.out_features // count))
            self.counts |= {p: count for p in projections}

    def follow(self, module: Any) -> None:
        for block_name, projection, size in self.blocks:
            block, width = module.get_submodule(block_name), module.get_submodule(projection).out_features
            for attribute in HEAD_ATTRIBUTES:
                if isinstance(getattr(block, attribute, None), int):
                    setattr(block, attribute, width // size)
            if isinstance(getattr(block, "all_head_size", None), int):
                block.all_head_size = width

    def heads(self, module: Any) -> dict[str, int]:
        return {projection: module.get_submodule(projection).out_features // size
                for _, projection, size in self.blocks}

    def removable(self, module: Any, example: tuple, shapes: list[tuple]) -> bool:
        """Whether the model still runs with the first head of every block removed from a copy: a block that reads
        its width from its config (not its own attributes) does not, and then every head stays."""
        if not self.blocks:
            return False
        trial = copy.deepcopy(module)
        graph = _graph(trial, example)
        for _, projection, size in self.blocks:
            layer = trial.get_submodule(projection)
            graph.get_pruning_group(layer, graph.get_pruner_of_module(layer).prune_out_channels,
                                    idxs=list(range(size))).prune()
        self.follow(trial)
        try:
            _check_forward(trial, example, shapes)
        except UserInputError:
            return False
        return True


def _interface_layers(module: Any, example: tuple, ignored: list, shapes: list[tuple], heads: dict) -> list:
    """The root layer of every group whose units the model's outputs or its own reshapes read (a classifier's
    classes, an encoder's hidden width when its output is the pooled hidden state): found by removing one unit of
    each group from a copy and running it. These groups are kept whole."""
    import torch

    names = {m: name for name, m in module.named_modules()}
    roots = [group[0].dep.target.module for group in _graph(module, example).get_all_groups(
        ignored_layers=ignored, root_module_types=[torch.nn.modules.conv._ConvNd, torch.nn.Linear])]
    kept = []
    for root in (r for r in roots if r not in heads):  # a head's units are its channels: _AttentionHeads
        trial = copy.deepcopy(module)
        layer = trial.get_submodule(names[root])
        trial_graph = _graph(trial, example)
        trial_graph.get_pruning_group(layer, trial_graph.get_pruner_of_module(layer).prune_out_channels,
                                      idxs=[0]).prune()
        try:
            _check_forward(trial, example, shapes)
        except UserInputError:
            kept.append(root)
    return kept


class _Distance:
    """How far the student's outputs are from the teacher's: KL of softened distributions for classifier outputs,
    KL of a language model's next-token distributions per position (at temperature 1, the one perplexity reads),
    squared error relative to the teacher's variance for every other output."""

    def __init__(self, kinds: list[str]) -> None:
        self.kinds = kinds

    def __call__(self, student: list, teacher: list) -> Any:
        import torch.nn.functional as F

        total = 0.0
        for kind, s, t in zip(self.kinds, student, teacher, strict=True):
            if kind == NEXT_TOKEN:
                total = total + F.kl_div(F.log_softmax(s.float().flatten(0, -2), -1),
                                         F.log_softmax(t.float().flatten(0, -2), -1), log_target=True,
                                         reduction="batchmean")
            elif kind == "classification" and s.dim() == 2:
                temperature = DISTILLATION_TEMPERATURE
                total = total + F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1),
                                         log_target=True, reduction="batchmean") * temperature ** 2
            else:
                total = total + F.mse_loss(s.float(), t.float()) / t.float().var().clamp_min(1e-12)
        return total


def _taylor_importance():
    """torch-pruning's Taylor importance, summed per channel where a group's scores come per flattened feature (a
    convolution feeding a linear through a flatten scores channels x positions, channel-major as NCHW flattens);
    unfixed, such a group is skipped and its convolution never pruned."""
    import torch_pruning as tp

    class ChannelTaylor(tp.importance.TaylorImportance):
        def __call__(self, group):
            scores = super().__call__(group)
            units = len(group[0].idxs)
            if scores is not None and len(scores) != units and len(scores) % units == 0:
                scores = scores.view(units, -1).sum(1)
            return scores

    return ChannelTaylor()


def _activation_importance():
    """A unit's importance where no classifier gives a loss: the magnitude of its activations on the step's
    calibration batch times its consumers' weights (Wanda's |x| x |W|, per input channel: the L2 norm of each input
    column); a group no linear or dense convolution consumes is ranked by weight magnitude. all-MiniLM-L6-v2 with
    30% / 70% of every layer's heads and feed-forward width removed (ranked on 64 sentences): cosine to the unpruned
    model 0.714 / 0.425 by weight magnitude, 0.795 / 0.513 by this, before distillation."""
    import torch
    import torch_pruning as tp

    class ActivationTimesWeight(tp.importance.ActivationImportance):
        magnitude = tp.importance.GroupMagnitudeImportance(p=2)

        @torch.no_grad()
        def __call__(self, group):
            scores, roots = [], []
            for i, (dep, idxs) in enumerate(group):
                layer, idxs = dep.target.module, sorted(idxs)
                if dep.handler not in (tp.prune_linear_in_channels, tp.prune_conv_in_channels) or \
                        getattr(layer, "groups", 1) != 1 or not hasattr(layer, "_importance"):
                    continue
                columns = layer.weight.transpose(0, 1)[idxs].flatten(1).norm(dim=1)
                scores.append(layer._importance[idxs] * columns)
                roots.append(group[i].root_idxs)
            if not scores:
                return self.magnitude(group)
            return self._normalize(self._reduce(scores, roots), self.normalizer)

    return ActivationTimesWeight()


def _meta_pruner():
    """torch-pruning's MetaPruner with its head share taken of a block's first head count: its own removes the
    step's cumulative share of the heads left (12 heads at 10% a step: 10, 8, 5, 3, 1 left)."""
    import torch_pruning as tp

    class StepwiseHeads(tp.pruner.MetaPruner):
        def get_target_head_pruning_ratio(self, module):
            first, now = self.init_num_heads[module], self.num_heads[module]
            kept = max(1, round(first * (1 - super().get_target_head_pruning_ratio(module))))
            return max(0.0, (now - kept) / now - 1e-9)  # torch-pruning removes ceil(share x heads left)

    return StepwiseHeads


def _taylor_gradients(student: Any, args: tuple, teacher_top1: Any) -> None:
    import torch.nn.functional as F

    student.zero_grad()
    F.cross_entropy(_outputs(student, args)[0].float(), teacher_top1).backward()


def _check_forward(student: Any, example: tuple, shapes: list[tuple]) -> None:
    """The pruned model still runs and gives outputs of the unpruned one's shapes, or the export stops here."""
    import torch

    try:
        with torch.no_grad():
            pruned = [tuple(t.shape) for t in _outputs(student, example)]
    except RuntimeError as exc:
        raise UserInputError(f"the pruned model no longer runs ({str(exc).splitlines()[0][:160]}): one of its layers "
                             "reads a width from its own attributes or config, which structured pruning cannot "
                             "follow; drop [prune] from the target") from exc
    if pruned != shapes:
        raise UserInputError(f"pruning changed the shape of the model's outputs ({shapes} -> {pruned}): its last layer "
                             "feeds them through an operation edgeport cannot follow; end the model with its output "
                             "layer, or drop [prune] from the target")


def _meets(row: dict, settings: PruneSettings) -> bool:
    return all(row[key.removeprefix("max_")] <= limit for key, limit in settings.limits().items())


def _widths(module: Any) -> dict[str, int]:
    import torch

    return {name: (m.out_channels if isinstance(m, torch.nn.modules.conv._ConvNd) else m.out_features)
            for name, m in module.named_modules() if isinstance(m, torch.nn.Linear | torch.nn.modules.conv._ConvNd)}


class _ChannelSteps:
    """Output channels and widths, and whole attention heads where the blocks' reshapes follow them: torch-pruning's
    MetaPruner, each step removing `step` more of every prunable layer's units (and of every block's heads), ranked
    on the step's calibration batch."""

    def __init__(self, student: Any, example: tuple, shapes: list[tuple], classifier: bool, batches: Any,
                 settings: PruneSettings) -> None:
        self.student, self.classifier, self.batches, self.settings = student, classifier, batches, settings
        self.count = math.floor(settings.max_pruned / settings.step + 1e-9)
        self.attention = _AttentionHeads(student, example)
        heads = self.attention.counts if self.attention.removable(student, example, shapes) else {}
        self.heads_before = self.attention.heads(student) if heads else {}
        ignored = [layer for layer in _attention_layers(student) if layer not in heads]
        ignored += _interface_layers(student, example, ignored, shapes, heads)
        importance = _taylor_importance() if classifier else _activation_importance()
        self.pruner = _meta_pruner()(student, example, importance=importance,
                                     pruning_ratio=self.count * settings.step, iterative_steps=self.count,
                                     ignored_layers=ignored, num_heads=heads, prune_num_heads=bool(heads),
                                     prune_head_dims=False, head_pruning_ratio=self.count * settings.step,
                                     round_to=settings.round_to if settings.round_to > 1 else None)
        self.done = 0

    def step(self) -> dict:
        import torch

        args, teacher = next(self.batches)
        if self.classifier:
            _taylor_gradients(self.student, args, teacher[0].argmax(-1))
        else:
            with torch.no_grad(), self.pruner.importance.compute_importance(self.student):
                _outputs(self.student, args)
        self.pruner.step()
        self.attention.follow(self.student)
        self.student.zero_grad()
        self.done += 1
        return {"removed_share": round(self.done * self.settings.step, 4)}

    @property
    def units(self) -> str:
        attention = "whole attention heads" if self.heads_before else "attention projections keep their heads"
        return ("output channels of convolutions and widths of linears, the hidden and feed-forward widths of "
                f"transformer blocks among them ({attention})")

    @property
    def importance(self) -> str:
        return "taylor on the unpruned model's top-1" if self.classifier else \
            "activation magnitude on a calibration batch x weight (L2 per input column)"

    def said(self, row: dict) -> str:
        return f"{row['removed_share']:.0%} of each layer's units removed"

    def extent(self) -> str:
        return f"{self.done * self.settings.step:.0%} of each layer's units"

    def kept(self, widths_before: dict[str, int]) -> dict:
        after, heads = _widths(self.student), self.attention.heads(self.student)
        return {name: {"units_before": width, "units_after": after[name]}
                | ({"heads_before": self.heads_before[name], "heads_after": heads[name]}
                   if name in self.heads_before else {})
                for name, width in widths_before.items() if after.get(name) != width}


class _LayerSteps:
    """Whole blocks of the model's stack of identical blocks (an encoder's layers), one a step: the block whose
    removal moves the outputs least on the step's calibration batch (each remaining block tried), up to
    `max_pruned` of them. A config's num_hidden_layers follows the stack."""

    def __init__(self, student: Any, distance: Any, batches: Any, settings: PruneSettings) -> None:
        self.student, self.distance, self.batches = student, distance, batches
        found = block_stack(student)
        if found is None:
            raise UserInputError("[prune] units = \"layers\" needs a stack of identical blocks (an nn.ModuleList of "
                                 "two or more layers of one class); this model has none: use units = \"channels\"")
        self.name, self.stack = found
        self.original = list(range(len(self.stack)))  # each remaining block's index in the unpruned stack
        self.total = len(self.stack)
        self.count = min(math.floor(self.total * settings.max_pruned + 1e-9), self.total - 1)
        self.removed: list[int] = []

    def _without(self, index: int, args: tuple) -> list:
        import torch

        block = self.stack[index]
        del self.stack[index]
        try:
            with torch.no_grad():
                return _outputs(self.student, args)
        finally:
            self.stack.insert(index, block)

    def step(self) -> dict:
        args, teacher = next(self.batches)
        moved = [self.distance(self._without(i, args), teacher).item() for i in range(len(self.stack))]
        least = int(np.argmin(moved))
        del self.stack[least]
        self.removed.append(self.original.pop(least))
        _follow_depth(self.student, self.stack, least)
        return {"removed_share": round(len(self.removed) / self.total, 4),
                "removed_layer": f"{self.name}.{self.removed[-1]}", "output_distance": round(moved[least], 6)}

    units = "whole layers of the model's stack of blocks"
    importance = "the distance the outputs move when the layer alone is removed (calibration batch)"

    def said(self, row: dict) -> str:
        return f"{row['removed_layer']} removed (output distance {row['output_distance']:.4g})"

    def extent(self) -> str:
        return f"{len(self.removed)} of {self.total} layers of {self.name}"

    def kept(self, widths_before: dict[str, int]) -> dict:
        return {self.name: {"units_before": self.total, "units_after": len(self.stack),
                            "removed": [f"{self.name}.{i}" for i in sorted(self.removed)]}}


def block_stack(module: Any) -> tuple[str, Any] | None:
    """The nn.ModuleList of two or more blocks of one class holding the most parameters: the model's layers."""
    import torch

    stacks = [(name, m) for name, m in module.named_modules() if isinstance(m, torch.nn.ModuleList) and len(m) >= 2
              and len({type(block) for block in m}) == 1]
    if not stacks:
        return None
    return max(stacks, key=lambda item: sum(p.numel() for p in item[1].parameters()))


def _follow_depth(module: Any, stack: Any, removed: int) -> None:
    """What counted or numbered the blocks follows the stack as it is now: a config's num_hidden_layers and per-layer
    lists (layer_types: which layers slide their attention window), and each block's layer_idx (the slot of its
    key/value cache), which code reads at run time."""
    before = len(stack) + 1
    for config in {id(c): c for m in module.modules() if (c := getattr(m, "config", None)) is not None}.values():
        if getattr(config, "num_hidden_layers", None) == before:
            config.num_hidden_layers = before - 1
        for name, value in vars(config).items():
            if isinstance(value, list) and len(value) == before and name.startswith("layer"):
                setattr(config, name, value[:removed] + value[removed + 1:])
    for index, block in enumerate(stack):
        for inner in block.modules():
            if isinstance(getattr(inner, "layer_idx", None), int):
                inner.layer_idx = index


class _Teacher:
    """The unpruned model's outputs on calibration rows: computed once for every row where they fit in
    TEACHER_CACHE_BYTES, else on each call."""

    def __init__(self, module: Any, calibration: dict[str, np.ndarray], input_names: list[str], batch: int) -> None:
        import torch

        self.module, self.calibration, self.input_names = module, calibration, input_names
        samples = len(next(iter(calibration.values())))
        first = self._run(np.arange(1))
        self.cached = None
        if samples * sum(t.numel() * t.element_size() for t in first) <= TEACHER_CACHE_BYTES:
            parts = [self._run(np.arange(start, min(start + batch, samples))) for start in range(0, samples, batch)]
            self.cached = [torch.cat(outputs) for outputs in zip(*parts, strict=True)]

    def _run(self, rows: np.ndarray) -> list:
        import torch

        with torch.no_grad():
            return _outputs(self.module, _tensors(self.calibration, self.input_names, rows))

    def __call__(self, rows: np.ndarray) -> list:
        return [t[rows] for t in self.cached] if self.cached is not None else self._run(rows)


def _batches(calibration: dict[str, np.ndarray], teacher: _Teacher, input_names: list[str], batch: int) -> Any:
    """Calibration batches with the unpruned model's outputs on them, cycling through the rows in order."""
    samples = len(next(iter(calibration.values())))
    rows = np.arange(min(batch, samples))
    while True:
        yield _tensors(calibration, input_names, rows), teacher(rows)
        rows = (rows + len(rows)) % samples


def prune(module: Any, example: tuple, input_names: list[str], output_kinds: list[str],
          calibration: dict[str, np.ndarray], settings: PruneSettings, quality: Callable[[Any], dict],
          latency_ms: Callable[[Any], float] | None, progress: Progress) -> Pruned:
    """Prune a copy of `module` step by step until the settings' limits hold (or max_pruned is reached: the closest
    candidate, recorded as not met), then distill it from `module` on the calibration arrays."""
    import torch

    started = time.perf_counter()
    torch.manual_seed(0)
    student = copy.deepcopy(module).eval()
    student.requires_grad_(True)
    classifier = output_kinds[0] == "classification"
    teacher = _Teacher(module, calibration, input_names, settings.batch)
    shapes = [tuple(t.shape) for t in _outputs(module, example)]
    batches = _batches(calibration, teacher, input_names, settings.batch)
    base_macs, base_params = _size(student, example)
    widths_before = _widths(student)
    steps = _LayerSteps(student, _Distance(output_kinds), batches, settings) if settings.units == "layers" else \
        _ChannelSteps(student, example, shapes, classifier, batches, settings)

    def measured(step: int, removed: dict) -> dict:
        macs, params = _size(student, example)
        row = {"step": step, **removed, "macs_ratio": round(macs / base_macs, 4),
               "params_ratio": round(params / base_params, 4)}
        if latency_ms is not None:
            row["latency_ms"] = latency_ms(student)
        return row | {"quality": quality(student)}

    rows = [measured(0, {"removed_share": 0.0})]
    while not _meets(rows[-1], settings) and len(rows) <= steps.count:
        removed = steps.step()
        _check_forward(student, example, shapes)
        rows.append(measured(len(rows), removed))
        row = rows[-1]
        progress(f"pruning: step {row['step']}: {steps.said(row)}, MACs x{row['macs_ratio']:.2f}, parameters "
                 f"x{row['params_ratio']:.2f}" + (f", {row['latency_ms']:.3f} ms" if "latency_ms" in row else ""))
    pruned_seconds = time.perf_counter() - started
    recovery = _distill(student, calibration, teacher, input_names, output_kinds, settings, progress) \
        if len(rows) > 1 else {"steps": 0, "seconds": 0.0, "curve": []}
    student.eval().requires_grad_(False)
    final = rows[-1] | {"quality": quality(student)}
    if latency_ms is not None and len(rows) > 1:
        final["latency_ms"] = latency_ms(student)  # distillation changes no shape; measured again, as shipped
    met = _meets(final, settings)
    section = {
        "settings": {k: v for k, v in dataclasses.asdict(settings).items() if v is not None}
        | {"budget": settings.budget.limits()},
        "units": steps.units,
        "importance": steps.importance,
        "met": met,
        "before": {"macs": base_macs, "params": base_params, **{k: v for k, v in rows[0].items() if k != "step"}},
        "after_pruning": rows[-1],
        "after_recovery": final,
        "steps": rows[1:],
        "modules": steps.kept(widths_before),
        "recovery": recovery,
        "seconds": {"pruning": round(pruned_seconds, 3), "recovery": recovery["seconds"]},
    }
    if not met:
        missed = ", ".join(f"{key.removeprefix('max_')} {final[key.removeprefix('max_')]:g} > {limit:g}"
                           for key, limit in settings.limits().items() if final[key.removeprefix("max_")] > limit)
        section["not_met"] = (f"pruning stopped at {steps.extent()} (max_pruned {settings.max_pruned:g}) with "
                              f"{missed}; the closest candidate was exported")
    return Pruned(student, section)


def _distill(student: Any, calibration: dict[str, np.ndarray], teacher: _Teacher, input_names: list[str],
             output_kinds: list[str], settings: PruneSettings, progress: Progress) -> dict:
    """Adam on the distance to the unpruned model's outputs, batches drawn in a seeded order from four fifths of the
    calibration rows; the other fifth (drawn at random, at most HELD_OUT_BATCHES batches) is held out, and the weights
    of the step where its distance was least are the ones kept (on a few hundred samples the training distance keeps
    falling long after the held-out one rose: MiniLM on 313 sentences, training 0.005, held-out cosine 0.79)."""
    import torch

    started = time.perf_counter()
    distance = _Distance(output_kinds)
    optimizer = torch.optim.Adam(student.parameters(), lr=settings.learning_rate)
    generator = torch.Generator().manual_seed(0)
    samples = len(next(iter(calibration.values())))
    order = np.random.default_rng(0).permutation(samples)  # calibration files are often ordered (by class, by source)
    held_count = min(samples // HELD_OUT_SHARE, HELD_OUT_BATCHES * settings.batch) \
        if samples >= MIN_HELD_OUT_SAMPLES else 0
    held, train = (order[:held_count], order[held_count:]) if held_count else (order, order)  # too few: said
    held_batches = [held[start:start + settings.batch] for start in range(0, len(held), settings.batch)]

    def held_out_distance() -> float:  # a batch at a time: a language model's logits are vocabulary wide
        with torch.no_grad():
            return sum(distance(_outputs(student, _tensors(calibration, input_names, rows)), teacher(rows)).item()
                       * len(rows) for rows in held_batches) / len(held)

    student.eval()  # BatchNorm keeps the statistics of the channels it kept; the calibration batches are small
    curve, every, out_of_time = [], max(1, settings.recovery_steps // CURVE_POINTS), False
    checked = time.perf_counter()
    before = held_out_distance()
    check_seconds = time.perf_counter() - checked
    best = (before, 0, copy.deepcopy(student.state_dict()))
    for step in range(1, settings.recovery_steps + 1):
        rows = train[torch.randint(0, len(train), (min(settings.batch, len(train)),), generator=generator).numpy()]
        loss = distance(_outputs(student, _tensors(calibration, input_names, rows)), teacher(rows))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        # stopped where the next step and the last held-out check would not fit in max_recovery_seconds any more
        elapsed = time.perf_counter() - started
        out_of_time = elapsed * (step + 1) / step + check_seconds > settings.max_recovery_seconds
        if step % every == 0 or step == settings.recovery_steps or out_of_time:
            held_out = held_out_distance()
            if held_out < best[0]:
                best = (held_out, step, copy.deepcopy(student.state_dict()))
            curve.append([step, round(loss.item(), 6), round(held_out, 6)])
            progress(f"pruning: distillation step {step}/{settings.recovery_steps}: loss {loss.item():.4f}, "
                     f"held out {held_out:.4f}")
        if out_of_time:
            break
    student.load_state_dict(best[2])
    return {"steps": curve[-1][0] if curve else 0, "kept_step": best[1], "held_out_before": round(before, 6),
            "learning_rate": settings.learning_rate,
            "batch": settings.batch, "held_out_samples": held_count,
            **({"stopped": f"within {settings.max_recovery_seconds:g} s (max_recovery_seconds)"}
               if out_of_time else {}),
            "seconds": round(time.perf_counter() - started, 3), "curve": curve,
            "curve_columns": ["step", "training batch loss", "held-out loss"],
            "loss": DISTILLATION_LOSSES.get(output_kinds[0], "squared error / the unpruned output's variance")}


DISTILLATION_LOSSES = {"classification": f"KL of temperature-{DISTILLATION_TEMPERATURE:g} distributions",
                       NEXT_TOKEN: "KL of the next-token distributions, per position"}
