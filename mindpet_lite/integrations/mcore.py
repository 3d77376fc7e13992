"""LoRA on MindFormers' mcore tensor-parallel layers (`ColumnParallelLinear`, `RowParallelLinear`,
`LinearNoTP` of `mindformers.parallel_core.training_graph.tensor_parallel.layers`), the layers
MindFormers 1.9 builds Qwen3, Qwen3-MoE, DeepSeek-V3 and the mcore GPT from.

Like `integrations.mindformers`, nothing here imports mindformers to *recognise* a layer: a network
can only hold one if that module is loaded, so the classes are looked up in `sys.modules`.

The cells are `LoRADense`s over the layer's own weight and bias Parameters, so merge / unmerge,
rsLoRA, named adapters, DoRA and the save / load / freeze machinery work unchanged. A is [r, in] and
B is [out, r] (full logical shapes) in every layout; the forward returns the layer's `(output, bias)`.

Tensor parallelism (Megatron-style LoRA), as `shard()` strategies from the layer's `config`:

- column-parallel (W split by output rows over tp): A replicated, B split by output rows, so the
  LoRA output is split like the base output and no collective is added;
- row-parallel (W split by input columns): A split by input columns, B replicated; the [N, r]
  partial sums of x·Aᵀ are all-reduced once (MindSpore inserts the reduce for the split
  contracted axis), then every rank applies the whole B.

The strategies are applied when the parallel mode splits operators (semi-auto / auto), as the
MindFormers layers apply theirs; tp > 1 on CPU is refused, because MindSpore 2.9 cannot compile a
semi-auto graph there (see `CPU_PARALLEL_ERROR`). The cells compute with plain MatMul / BiasAdd
operators on the logical shapes (the MindFormers layers use a self-sharded Morph): where a
neighbour expects another layout (sequence_parallel's sequence-split row output) the parallel
compiler redistributes, an all-reduce and a slice where the Morph would reduce-scatter. Not run on
Ascend here: the split is proven by simulating the ranks in numpy (tests/integrations/test_mcore.py).
"""
import logging
import sys

import mindspore as ms
import numpy as np

from mindpet_lite import _checks
from mindpet_lite.delta.graph_mode import operators_sharded
from mindpet_lite.delta.lora import LORA_A, LORA_B, LORA_MAGNITUDE, LoRADense

logger = logging.getLogger(__name__)

LAYERS_MODULE = "mindformers.parallel_core.training_graph.tensor_parallel.layers"
LORA_LAYERS_MODULE = "mindformers.parallel_core.training_graph.tensor_parallel.lora_layers"

COLUMN, ROW, REPLICATED = "column", "row", "replicated"

# measured: MindSpore 2.9.0, CPU, parallel_mode="semi_auto_parallel", a MatMul with a shard strategy
CPU_PARALLEL_ERROR = ("Invalid communication backend: CPU for semi_auto_parallel/auto_parallel mode, currently "
                      "only support Ascend/GPU backend.")

__all__ = ["is_parallel_linear", "parallel_kind", "tensor_parallel_strategies", "lora_split_axes", "parallel_layout",
           "LoRAParallelLinear",
           "LoRAColumnParallelLinear", "LoRARowParallelLinear", "CPU_PARALLEL_ERROR"]


def _layer_class(name, module=LAYERS_MODULE):
    loaded = sys.modules.get(module)
    return getattr(loaded, name, None) if loaded is not None else None


def parallel_kind(cell):
    """'column', 'row' or 'replicated' (LinearNoTP) for an mcore layer, else None (no import)."""
    for name, kind in (("LinearNoTP", REPLICATED), ("ColumnParallelLinear", COLUMN), ("RowParallelLinear", ROW)):
        cls = _layer_class(name)  # LinearNoTP first: it subclasses ColumnParallelLinear
        if cls is not None and isinstance(cell, cls):
            return kind
    return None


def is_parallel_linear(cell):
    """True for MindFormers' mcore ColumnParallelLinear / RowParallelLinear / LinearNoTP."""
    return parallel_kind(cell) is not None


def mindformers_lora_class(cell):
    """The name of MindFormers' own mcore LoRA class `cell` is an instance of, or None."""
    for name in ("ColumnParallelLinearWithLoRA", "RowParallelLinearWithLoRA"):
        cls = _layer_class(name, LORA_LAYERS_MODULE)
        if cls is not None and isinstance(cell, cls):
            return name
    return None


def _size(config, key):
    value = getattr(config, key, None) if config is not None else None
    return 1 if value is None else int(value)


def tensor_parallel_strategies(kind, tp, dp=1, cp=1, transpose_b=True, has_bias=False, dropout=False):
    """`LoRADense.shard` keyword arguments of one layer (2-D operands: x is [N, in], N = S·B).

    Rows of x are split over dp·cp as the mcore layers split [S, B, h] over (cp, dp). Column: W and
    B split by output rows (tp), A whole. Row: W and A split by input columns (tp), B whole; x·Aᵀ
    is a partial sum over tp that the parallel compiler all-reduces once, on the narrow [N, r].
    Replicated (LinearNoTP): nothing split by tp.
    """
    if kind not in (COLUMN, ROW, REPLICATED):
        raise ValueError(f"kind must be one of {[COLUMN, ROW, REPLICATED]}, got {_checks.describe(kind)}")
    for key, value in (("tp", tp), ("dp", dp), ("cp", cp)):
        _checks.check_positive_int(key, value)
    rows = dp * cp
    # how the output features and the input features (x's and W's input axis) are split over tp
    out_split, in_split = (tp, 1) if kind == COLUMN else (1, tp) if kind == ROW else (1, 1)
    weight = (out_split, in_split) if transpose_b else (in_split, out_split)
    plan = {
        "strategy_org_dense_matmul": ((rows, in_split), weight),
        "strategy_lora_a_matmul": ((rows, in_split), (1, in_split)),  # A [r, in]: never split by r
        "strategy_lora_mul": ((rows, 1), ()),  # x·Aᵀ [N, r], whole after the reduce
        "strategy_lora_b_matmul": ((rows, 1), (out_split, 1)),  # B [out, r]
        "strategy_lora_add": ((rows, out_split), (rows, out_split)),
    }
    if has_bias:
        plan["strategy_org_bias_add"] = ((rows, out_split), (out_split,))
    if dropout:
        plan["strategy_lora_dropout"] = ((rows, in_split),)
    return plan


def lora_split_axes(cell):
    """{parameter leaf name: the axis its tensor-parallel shards split, or None (replicated)} of a
    LoRA cell: what one rank's save holds of A, B (and DoRA's magnitude). Column: B and m by
    output rows (axis 0); row: A by input columns (axis 1); tp=1 or LinearNoTP: nothing split."""
    split = cell.tensor_parallel_size > 1
    axes = {LORA_A: 1 if split and cell.parallel_kind == ROW else None,
            LORA_B: 0 if split and cell.parallel_kind == COLUMN else None}
    if cell.use_dora:
        axes[LORA_MAGNITUDE] = axes[LORA_B]
    return axes


def parallel_layout(net):
    """{layer path: {'kind', 'tensor_parallel_size', 'split_axes'}} of every mcore LoRA cell of `net`
    (for gathering per-rank adapter saves)."""
    return {path: {"kind": cell.parallel_kind, "tensor_parallel_size": cell.tensor_parallel_size,
                   "split_axes": lora_split_axes(cell)}
            for path, cell in net.cells_and_names() if isinstance(cell, LoRAParallelLinear)}


class LoRAParallelLinear(LoRADense):
    """LoRADense over an mcore parallel linear layer; build it with `from_layer`.

    Attributes recorded from the layer: `parallel_kind` ('column', 'row', 'replicated'),
    `tensor_parallel_size` (the config's tensor_model_parallel_size), `transpose_b` (True: W is
    [out, in]), `skip_bias_add` (the bias is returned, not added), `skip_weight_param_allocation`
    (W is the caller's, passed to construct), `input_size` / `output_size`, `config`.
    """

    parallel_kind = None
    # defaults until from_layer sets the layer's (LoRADense.__init__ already reads transpose_b with DoRA)
    transpose_b = True
    skip_bias_add = False
    skip_weight_param_allocation = False
    returns_bias = False
    tensor_parallel_size = 1
    config = None

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.input_size, self.output_size = self.in_channels, self.out_channels

    @classmethod
    def from_layer(cls, layer, lora_rank, lora_alpha, lora_dropout=0., lora_a_init=None, lora_b_init="zeros",
                   param_init_type=None, compute_dtype=None, use_rslora=False, use_dora=False):
        """Wrap an mcore layer: the same weight and bias Parameter objects, its MatMul primitive (so
        either weight layout works), its compute dtype (config.compute_dtype) unless given;
        param_init_type defaults to the weight's dtype.

        Raises:
            TypeError: `layer` is not an mcore parallel linear of this cell's kind, or is already
                MindFormers' own LoRA layer; a mistyped LoRA argument.
            ValueError: tp > 1 on CPU; DoRA where it cannot apply; a LoRA argument out of range.
        """
        kind = parallel_kind(layer)
        wanted = (COLUMN, REPLICATED) if cls.parallel_kind == COLUMN else (cls.parallel_kind,)
        if kind not in wanted:
            raise TypeError(f"layer must be a mindformers mcore {'ColumnParallelLinear / LinearNoTP' if cls.parallel_kind == COLUMN else 'RowParallelLinear'}"
                            f", got {_checks.describe(layer)}")
        own = mindformers_lora_class(layer)
        if own is not None:
            raise TypeError(f"layer is already MindFormers' own {own} (with lora_A / lora_B): start from the base "
                            "model, or load its factors into mindpet_lite cells (names map lora_A -> mindpet_delta_lora_a)")
        config = getattr(layer, "config", None)
        tp = _size(config, "tensor_model_parallel_size")
        transpose_b = bool(layer.transpose_b)
        skip_alloc = bool(getattr(layer, "skip_weight_param_allocation", False))
        _check_layout(layer, kind, tp, transpose_b, skip_alloc, use_dora)
        has_bias = bool(layer.has_bias)
        wdtype = layer.weight.dtype if layer.weight is not None else config.params_dtype
        param_init_type = wdtype if param_init_type is None else param_init_type
        if compute_dtype is None:
            compute_dtype = getattr(layer, "compute_dtype", None) or wdtype
        extra = {} if lora_a_init is None else {"lora_a_init": lora_a_init}
        cell = cls(layer.input_size, layer.output_size, lora_rank, lora_alpha, lora_dropout,
                   lora_b_init=lora_b_init, param_init_type=param_init_type, compute_dtype=compute_dtype,
                   use_rslora=use_rslora, use_dora=use_dora, has_bias=has_bias and not layer.skip_bias_add,
                   weight_init="zeros", bias_init="zeros", dtype=wdtype, **extra)
        cell.matmul = layer.matmul  # its transpose_b is the layer's
        if skip_alloc:  # construct receives W; a None Parameter entry would break graph compilation
            del cell.weight
            object.__setattr__(cell, "weight", None)
        else:
            cell.weight = layer.weight
        cell.bias = layer.bias if has_bias else None
        cell.transpose_b, cell.skip_bias_add, cell.skip_weight_param_allocation = \
            transpose_b, bool(layer.skip_bias_add), skip_alloc
        cell.returns_bias = has_bias and bool(layer.skip_bias_add)
        cell.tensor_parallel_size, cell.config = tp, config
        cell.parallel_kind = kind
        if not transpose_b:
            cell._fold_mode = False  # the folded form assumes W [out, in]
        if use_dora:  # the magnitude was measured on the placeholder weight
            cell.init_dora_magnitude()
        if operators_sharded():
            cell.shard_tensor_parallel()
            logger.info("%s-parallel LoRA (%d -> %d, tp=%d): shard strategies set", kind, cell.in_channels,
                        cell.out_channels, tp)
        return cell

    def tensor_parallel_plan(self):
        """This layer's `tensor_parallel_strategies` from its config (dp, cp, tp)."""
        return tensor_parallel_strategies(self.parallel_kind, self.tensor_parallel_size,
                                          _size(self.config, "data_parallel_size"),
                                          _size(self.config, "context_parallel_size"), self.transpose_b,
                                          has_bias=self.has_bias, dropout=self.lora_dropout is not None)

    def shard_tensor_parallel(self):
        """Apply `tensor_parallel_plan` (called by `from_layer` under semi-auto / auto parallel)."""
        return self.shard(**self.tensor_parallel_plan())

    def _parallel_forward(self, input_, weight, rows):
        if weight is None:
            if self.skip_weight_param_allocation:
                raise ValueError("this LoRA layer wraps a ColumnParallelLinear with skip_weight_param_allocation=True: "
                                 "construct needs the weight")
            weight = self.weight
        out = self._forward(input_, weight, rows)
        if self.returns_bias:
            return out, self.bias
        return out, None

    # ---- merge: the layout, and a weight the layer does not own -------------------------------
    def delta_weight(self):
        """s·B·A in the weight's layout: [out, in], or [in, out] when transpose_b is False."""
        delta = super().delta_weight()
        return delta if self.transpose_b else np.ascontiguousarray(delta.T)

    def _fold(self, sign):
        if self.weight is None:
            raise ValueError("cannot merge / unmerge a LoRA layer over a ColumnParallelLinear with "
                             "skip_weight_param_allocation=True: its weight belongs to another cell (the shared "
                             "embedding), which the merge would change too")
        super()._fold(sign)

    def init_from_weight(self, method, niter=None):
        if self.weight is None or not self.transpose_b:
            raise ValueError(f"init_from_weight ({method}) needs a weight of this layer stored [out, in]; this one is "
                             f"{'not allocated (skip_weight_param_allocation)' if self.weight is None else 'stored [in, out] (transpose_b=False)'}")
        return super().init_from_weight(method, niter)

    def extend_repr(self):
        return (f"{super().extend_repr()}, parallel_kind={self.parallel_kind}, tensor_parallel_size="
                f"{self.tensor_parallel_size}, transpose_b={self.transpose_b}, skip_bias_add={self.skip_bias_add}")


class LoRAColumnParallelLinear(LoRAParallelLinear):
    """LoRA over a ColumnParallelLinear (or LinearNoTP): construct(input_, weight=None) -> (output, bias)."""

    parallel_kind = COLUMN

    def construct(self, input_, weight=None, rows=None):
        return self._parallel_forward(input_, weight, rows)


class LoRARowParallelLinear(LoRAParallelLinear):
    """LoRA over a RowParallelLinear: construct(input_) -> (output, bias)."""

    parallel_kind = ROW

    def construct(self, input_, rows=None):
        return self._parallel_forward(input_, None, rows)


def lora_class_for(cell):
    """The mindpet_lite cell class for an mcore layer (None for other cells)."""
    kind = parallel_kind(cell)
    if kind is None:
        return None
    return LoRARowParallelLinear if kind == ROW else LoRAColumnParallelLinear


def _check_layout(layer, kind, tp, transpose_b, skip_alloc, use_dora):
    """Refusals that depend on the layer, before anything is built."""
    if tp > 1 and ms.get_context("device_target") == "CPU":
        raise ValueError(f"tensor_model_parallel_size={tp}: the tensor-parallel LoRA split runs through semi-auto "
                         f"parallel, which MindSpore 2.9 does not compile on CPU (it raises RuntimeError: "
                         f"{CPU_PARALLEL_ERROR!r}); use tp=1 on CPU, tp > 1 on Ascend")
    weight = getattr(layer, "weight", None)
    if weight is None and not skip_alloc:
        raise ValueError(f"the {kind}-parallel layer has no weight Parameter")
    if weight is not None:
        expected = (layer.output_size, layer.input_size) if transpose_b else (layer.input_size, layer.output_size)
        if tuple(weight.shape) != expected:
            raise ValueError(f"{kind}-parallel layer weight must have shape {list(expected)} (transpose_b="
                             f"{transpose_b}), got {list(weight.shape)}")
    if use_dora:
        why = ("its weight is stored [in, out] (transpose_b=False)" if not transpose_b else
               "its weight is not its own (skip_weight_param_allocation=True)" if skip_alloc else
               "DoRA's row norm would need the input columns every rank holds (a second all-reduce) on a "
               "row-parallel layer with tp > 1" if kind == ROW and tp > 1 else None)
        if why is not None:
            raise ValueError(f"use_dora=True is not supported on this {kind}-parallel layer: {why}")



# ---- MindFormers' own pet pipeline (use_mindpet_lite) ------------------------------------------
def _from_mindformers_args(kind, kwargs):
    """A fresh mcore layer from the arguments MindFormers' LoRA adapter passes its
    `...WithLoRA` classes, wrapped: the adapter builds a new layer too (the base checkpoint is
    loaded after get_pet_model), and its LoRA defaults (A 'normal', B 'zeros') are kept."""
    # pylint: disable=import-outside-toplevel
    import importlib
    layers = importlib.import_module(LAYERS_MODULE)
    lora = {key: kwargs.pop(key) for key in ("lora_rank", "lora_alpha", "lora_dropout") if key in kwargs}
    lora.setdefault("lora_rank", 8)
    lora.setdefault("lora_alpha", 32)
    lora_a_init = kwargs.pop("lora_a_init", "normal")
    lora_b_init = kwargs.pop("lora_b_init", "zeros")
    base_cls, cell_cls = ((layers.ColumnParallelLinear, LoRAColumnParallelLinear) if kind == COLUMN else
                          (layers.RowParallelLinear, LoRARowParallelLinear))
    base = base_cls(**kwargs)
    return cell_cls.from_layer(base, lora_a_init=lora_a_init, lora_b_init=lora_b_init, **lora)


def column_lora_from_args(**kwargs):
    """Stands in for MindFormers' `ColumnParallelLinearWithLoRA(...)` under `use_mindpet_lite`."""
    return _from_mindformers_args(COLUMN, kwargs)


def row_lora_from_args(**kwargs):
    """Stands in for MindFormers' `RowParallelLinearWithLoRA(...)` under `use_mindpet_lite`."""
    return _from_mindformers_args(ROW, kwargs)


MINDFORMERS_LORA_BUILDERS = {"ColumnParallelLinearWithLoRA": column_lora_from_args,
                             "RowParallelLinearWithLoRA": row_lora_from_args}
