"""LoRADense: a dense layer with a low-rank trainable update, a drop-in for MindPet's LoRADense.

    y = activation(x·Wᵀ + b + s·(dropout(x)·Aᵀ)·Bᵀ),   s = alpha / rank  (alpha / sqrt(rank) with rsLoRA)

A is [rank, in] (HeUniform init), B is [out, rank] (zeros), so a fresh layer equals its base Dense.
The layer knows no config and no file: `pet.get_pet_model` decides where it goes.

Two ways to compute the same function, chosen per call from the static shapes (benchmarks/README.md):

- branch:  x·Wᵀ + ((x·Aᵀ)·s)·Bᵀ — the textbook form; right when there are few rows (decoding).
- folded:  x·(W + (s·B)·A)ᵀ with the LoRA gradients through the narrow [N, r] products
  (`lora_fold.py`); cheaper when there are many rows. Used for float32 compute without dropout
  (folding in float16/bfloat16 would round s·B·A to W's ulp).

Argument checks live in `lora_checks.py`, activation sharding in `lora_shard.py`. DoRA
(``use_dora``: a trainable magnitude per output row, first adapter only) has its own branch, its math in
`lora_dora.py`; PiSSA / OLoRA starts (`init_from_weight`) take their factors from `lora_init.py`.

Named adapters (`lora_adapters.py`, whose `NamedAdapters` gives the cell those methods): the pair
above is the first adapter, "default"; `add_adapter`
puts more pairs beside it (own rank, alpha, scaling), `set_active_adapter` chooses the one the
forward uses (None: the base layer), and ``construct(x, rows)`` runs a batch whose rows each use
their own adapter. The active adapter is a graph constant: a cell with one adapter in use compiles
to the same graph as a single-adapter cell, and changing it recompiles.
"""
import logging
import math

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore import dtype as mstype
from mindspore.common.initializer import HeUniform

from mindpet_lite import _checks
from mindpet_lite.delta.graph_mode import invalidate_compiled_graphs, operators_sharded
from mindpet_lite.delta.lora_checks import check_activation, check_init, check_strategy, init_value
from mindpet_lite.delta.lora_adapters import DEFAULT_ADAPTER, MixedLoRAMatMul, NamedAdapters
from mindpet_lite.delta.lora_dora import (check_magnitude, dora_merged, dora_scale, dora_unmerged,
                                          row_norms)
from mindpet_lite.delta.lora_fold import FoldedLoRAMatMul, fold_pays
from mindpet_lite.delta.lora_init import WEIGHT_INITS, weight_init_factors
from mindpet_lite.delta.lora_shard import activation_shards

logger = logging.getLogger(__name__)

LORA_MARK = "mindpet_delta_lora_"  # MindPet's parameter names: every LoRA factor's name holds it
LORA_A = LORA_MARK + "a"
LORA_B = LORA_MARK + "b"
LORA_MAGNITUDE = LORA_MARK + "magnitude"  # DoRA's m: trainable, saved and frozen like A and B

def lora_scaling(lora_alpha, lora_rank, use_rslora=False):
    """s = alpha / rank, or alpha / sqrt(rank) with rsLoRA: the one place the formula is written."""
    return lora_alpha / (math.sqrt(lora_rank) if use_rslora else lora_rank)


class LoRADense(NamedAdapters, nn.Dense):
    r"""Dense layer plus a trainable low-rank update, for LoRA fine-tuning.

    Args:
        in_channels (int): input features.
        out_channels (int): output features.
        lora_rank (int): rank r of the update, > 0 (numpy ints too). Above min(in_channels,
            out_channels) it is accepted, as in MindPet and HF PEFT, with a warning.
        lora_alpha (Union[int, float]): numerator of the scaling alpha / r, finite, not 0 (numpy
            scalars and fractions.Fraction are converted to a Python int / float).
        lora_dropout (float): dropout on the LoRA branch input, in [0, 1). 0 adds no op to the graph.
        lora_a_init, lora_b_init: anything `mindspore.common.initializer.initializer` takes, real and
            finite; a Tensor (lazily initialised ones too) must have shape [lora_rank, in_channels]
            (A) or [out_channels, lora_rank] (B).
        param_init_type (mindspore.dtype): dtype of A and B (float16, float32 or bfloat16).
        compute_dtype (mindspore.dtype): dtype of the matmuls (float16, float32 or bfloat16).
        use_rslora (bool): scale by alpha / sqrt(r) instead of alpha / r.
        use_dora (bool): DoRA: a trainable magnitude per output feature (`mindpet_delta_lora_magnitude`,
            param_init_type), set to the row norms ‖W + s·B·A‖ of the weight (see `init_dora_magnitude`).
        **kwargs: passed to `nn.Dense` (weight_init, bias_init, has_bias, activation, dtype).

    Inputs:
        - **x** (Tensor) - shape (*, in_channels), rank >= 2.
        - **rows** (Tensor, optional) - float [B, K] one-hot of each batch row's adapter over the
          network's K adapters (``set_mix_columns``; a zero row: the base layer); x's first axis is B.

    Outputs:
        Tensor of shape (*, out_channels), in the dtype of `x`.

    Raises:
        TypeError: a wrongly typed lora_rank, lora_alpha, lora_dropout, dtype, init (complex too) or
            activation (a Primitive that is not element-wise too).
        ValueError: lora_rank <= 0, lora_alpha 0 / NaN / Inf, lora_dropout outside [0, 1), an init
            Tensor of the wrong shape or with NaN / Inf, an unknown activation name.
    """

    takes_rows = True  # construct(x, rows): models hand a mixed batch's per-row adapter selection on
    first_pair = (LORA_A, LORA_B)  # the first adapter's parameter names (NamedAdapters builds the others')
    scaling_rule = staticmethod(lora_scaling)

    def __init__(self, in_channels, out_channels, lora_rank, lora_alpha, lora_dropout=0.,
                 lora_a_init=HeUniform(negative_slope=math.sqrt(5)), lora_b_init="zeros",
                 param_init_type=mstype.float32, compute_dtype=mstype.float16, use_rslora=False,
                 use_dora=False, **kwargs):
        # every check before anything is built; numpy ints and floats become Python ones
        lora_rank = _checks.check_positive_int("lora_rank", lora_rank)
        lora_alpha = _checks.check_lora_alpha("lora_alpha", lora_alpha)
        _checks.check_dropout("lora_dropout", lora_dropout)
        _checks.check_bool("use_rslora", use_rslora)
        _checks.check_bool("use_dora", use_dora)
        param_init_type = _checks.to_float_dtype("param_init_type", param_init_type)
        compute_dtype = _checks.to_float_dtype("compute_dtype", compute_dtype)
        check_activation(kwargs.get("activation"))
        if _checks.is_int(in_channels) and _checks.is_int(out_channels):  # else nn.Dense names them
            in_channels, out_channels = int(in_channels), int(out_channels)
            check_init("lora_a_init", lora_a_init, (lora_rank, in_channels))
            check_init("lora_b_init", lora_b_init, (out_channels, lora_rank))
            if lora_rank > min(in_channels, out_channels):
                # accepted, as MindPet and HF PEFT do (MindPet's own tests use rank 2 on 1x1 layers)
                logger.warning("LoRADense(%d, %d): lora_rank=%d is larger than min(in_channels, out_channels)=%d: "
                               "B·A has rank at most %d, the extra rank adds parameters but no capacity",
                               in_channels, out_channels, lora_rank, min(in_channels, out_channels),
                               min(in_channels, out_channels))
        super().__init__(in_channels, out_channels, **kwargs)

        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.use_rslora = use_rslora
        self.scaling = lora_scaling(lora_alpha, lora_rank, use_rslora)
        self.dtype = compute_dtype
        self.merged = False
        self.mindpet_delta_lora_a = Parameter(init_value(lora_a_init, [lora_rank, in_channels], param_init_type),
                                              name=LORA_A)
        self.mindpet_delta_lora_b = Parameter(init_value(lora_b_init, [out_channels, lora_rank], param_init_type),
                                              name=LORA_B)
        self.use_dora = use_dora
        self.lora_init_factors = None  # (A0, B0) of a PiSSA / OLoRA start, see init_from_weight
        self._dora_norm = None  # the row norms a DoRA merge divided by, which unmerge multiplies back
        if use_dora:
            self.mindpet_delta_lora_magnitude = Parameter(init_value("ones", [out_channels], param_init_type),
                                                          name=LORA_MAGNITUDE)
            self.init_dora_magnitude()

        self.lora_dropout = nn.Dropout(p=lora_dropout) if lora_dropout > 0 else None
        # None: choose per call from the shapes; True / False: force the folded / branch form
        self._fold_mode = None
        self.folded_matmul = FoldedLoRAMatMul(self.scaling)
        self.cast = ops.Cast()
        self.lora_a_matmul = ops.MatMul(transpose_b=True)
        self.lora_b_matmul = ops.MatMul(transpose_b=True)
        self.mul = ops.Mul()
        self.add = ops.Add()
        # named adapters beyond the first (lora_adapters.py); graph constants, set by the methods below
        self.active_adapter = DEFAULT_ADAPTER  # None: the base layer
        self.extra_adapters = {}  # name -> (rank, alpha, use_rslora, scaling), in the order added
        self._active_extra = None  # (A name, B name) when the active adapter is not the first
        self.extra_folded_matmul = FoldedLoRAMatMul(1.0)  # its scaling is the active named adapter's
        self.mixed_matmul = MixedLoRAMatMul()
        self._mix_pairs = ()  # (A name, B name) of the adapters held, in E's column order
        self._mix_expand = None  # E [K, R] (lora_adapters.mix_expansion), set by set_mix_columns

    @classmethod
    def from_dense(cls, dense, lora_rank, lora_alpha, lora_dropout=0.,
                   lora_a_init=HeUniform(negative_slope=math.sqrt(5)), lora_b_init="zeros",
                   param_init_type=None, compute_dtype=None, use_rslora=False, use_dora=False):
        """Wrap an existing nn.Dense: the same weight and bias Parameter objects (no copy), its
        activation; param_init_type and compute_dtype default to the weight's dtype."""
        if not isinstance(dense, nn.Dense):
            raise TypeError(f"dense must be a mindspore.nn.Dense, got {_checks.describe(dense)}")
        if isinstance(dense, LoRADense):  # wrapping it would drop its trained A and B
            raise TypeError(f"dense must be a plain mindspore.nn.Dense, got a {type(dense).__name__} "
                            f"({dense.in_channels} -> {dense.out_channels}, lora_rank={dense.lora_rank}) that "
                            "already holds its own LoRA factors: use it as it is, or merge() it into a Dense")
        wdtype = dense.weight.dtype
        # float64 weights etc. are not LoRA dtypes: let the dtype check name them
        param_init_type = wdtype if param_init_type is None else param_init_type
        compute_dtype = wdtype if compute_dtype is None else compute_dtype
        activation = dense.activation if dense.activation_flag else None
        cell = cls(dense.in_channels, dense.out_channels, lora_rank, lora_alpha, lora_dropout,
                   lora_a_init, lora_b_init, param_init_type, compute_dtype, use_rslora, use_dora,
                   has_bias=dense.has_bias, activation=activation,
                   weight_init="zeros", bias_init="zeros", dtype=wdtype)
        cell.weight = dense.weight
        if dense.has_bias:
            cell.bias = dense.bias
        if use_dora:  # the magnitude was measured on the placeholder weight
            cell.init_dora_magnitude()
        return cell

    def construct(self, x, rows=None):
        return self._forward(x, self.weight, rows)

    def _forward(self, x, weight, rows):
        """The forward with the base weight given: a subclass whose weight may come from the
        caller (MindFormers' ColumnParallelLinear with skip_weight_param_allocation) passes its own."""
        ori_dtype = x.dtype
        x_shape = self.shape_op(x)
        if len(x_shape) < 2:
            raise ValueError(f"LoRADense input must have rank >= 2, got shape {x_shape}")
        if ori_dtype != self.dtype:  # dtypes are graph constants: equal dtypes add no Cast op
            x = self.cast(x, self.dtype)
        if len(x_shape) != 2:
            x = self.reshape(x, (-1, x_shape[-1]))
        weight = self._as_compute(weight)
        if self.merged and rows is not None:
            raise ValueError("a merged LoRADense cannot run a mixed batch: unmerge() it first")
        if self.merged or (self.active_adapter is None and rows is None):
            out = self.matmul(x, weight)
        elif rows is not None:
            out = self.add(self.matmul(x, weight), self._mixed_branch(x, rows))
        elif self._active_extra is not None:
            out = self._named_forward(x, weight, x_shape)
        elif self.use_dora:
            out = self._dora_matmul(x, weight, x_shape)
        elif self._use_fold(x_shape):
            out = self.folded_matmul(x, weight, self.mindpet_delta_lora_a, self.mindpet_delta_lora_b)
        else:
            out = self.matmul(x, weight)
            h = x if self.lora_dropout is None else self.lora_dropout(x)
            h = self.lora_a_matmul(h, self._as_compute(self.mindpet_delta_lora_a))  # [N, r]: x·Aᵀ first
            h = self.mul(h, self.scaling)  # scale the narrow [N, r] product, not the [N, out] one
            h = self.lora_b_matmul(h, self._as_compute(self.mindpet_delta_lora_b))
            out = self.add(out, h)
        if self.has_bias:
            out = self.bias_add(out, self._as_compute(self.bias))
        if self.activation_flag:
            out = self.activation(out)
        if len(x_shape) != 2:
            out = self.reshape(out, x_shape[:-1] + (self.out_channels,))
        if ori_dtype != self.dtype:
            out = self.cast(out, ori_dtype)
        return out

    def _named_forward(self, x, weight, x_shape):
        """The forward of the active named adapter (not the first): the same two forms."""
        lora_a, lora_b = getattr(self, self._active_extra[0]), getattr(self, self._active_extra[1])
        if self._use_fold(x_shape):
            return self.extra_folded_matmul(x, weight, lora_a, lora_b)
        h = x if self.lora_dropout is None else self.lora_dropout(x)
        h = self.mul(self.lora_a_matmul(h, self._as_compute(lora_a)), self.extra_folded_matmul.scaling)
        return self.add(self.matmul(x, weight), self.lora_b_matmul(h, self._as_compute(lora_b)))

    def _mixed_branch(self, x, rows):
        """Every row's own adapter (``rows`` [B, K] one-hot over the network's adapters)."""
        if self._mix_expand is None:
            raise ValueError("this LoRADense has no mixed-batch plan: call set_mix_columns(adapter names) first")
        h = x if self.lora_dropout is None else self.lora_dropout(x)
        a_parts, b_parts = (), ()
        for a_name, b_name in self._mix_pairs:
            a_parts = a_parts + (self._as_compute(getattr(self, a_name)),)
            b_parts = b_parts + (self._as_compute(getattr(self, b_name)),)
        return self.mixed_matmul(h, self.cast(rows, self.dtype), ops.concat(a_parts, 0), ops.concat(b_parts, 1),
                                 self._mix_expand)

    def _lora_branch(self, h):
        """s·(h·Aᵀ)·Bᵀ, scaling the narrow [N, r] product."""
        h = self.lora_a_matmul(h, self._as_compute(self.mindpet_delta_lora_a))
        h = self.mul(h, self.scaling)
        return self.lora_b_matmul(h, self._as_compute(self.mindpet_delta_lora_b))

    def _dora_matmul(self, x, weight, x_shape):
        """DoRA's product without bias (lora_dora.py): m/n ⊙ (x·Wᵀ + s·x·Aᵀ·Bᵀ), in the folded form
        when it pays; with dropout in training PEFT's form, the base product on the undropped x."""
        scale = dora_scale(weight, self.mindpet_delta_lora_a, self.mindpet_delta_lora_b,
                           self.mindpet_delta_lora_magnitude, self.scaling, self.dtype)
        if self.lora_dropout is not None and self.training:
            h = self.lora_dropout(x)
            return self.matmul(x, weight) + (scale - 1) * self.matmul(h, weight) + scale * self._lora_branch(h)
        if self._use_fold(x_shape):
            return self.folded_matmul(x, weight, self.mindpet_delta_lora_a, self.mindpet_delta_lora_b) * scale
        return (self.matmul(x, weight) + self._lora_branch(x)) * scale

    def _as_compute(self, param):
        if param.dtype != self.dtype:
            return self.cast(param, self.dtype)
        return param

    def _use_fold(self, x_shape):
        """Folded form for float32 compute, no dropout and enough rows (static shapes only). Never under
        semi-auto / auto / hybrid parallel: the folded cell's matmuls carry no ``shard()`` strategies,
        the branch's operators do (:meth:`shard`), and a fold would bypass them."""
        if operators_sharded():
            return False
        if self._fold_mode is not None:
            return self._fold_mode and self.lora_dropout is None
        if self.lora_dropout is not None or self.dtype != mstype.float32:
            return False
        rows = 1
        for dim in x_shape[:-1]:
            if dim is None or dim < 0:
                return False
            rows = rows * dim
        return fold_pays(rows, self.in_channels, self.out_channels)

    # ---- merge / unmerge -------------------------------------------------------------------
    def delta_weight(self):
        """s·B·A as a float32 numpy array of the weight's shape [out, in]."""
        a = self.mindpet_delta_lora_a.asnumpy().astype(np.float32)
        b = self.mindpet_delta_lora_b.asnumpy().astype(np.float32)
        return np.float32(self.scaling) * (b @ a)

    def _fold(self, sign):
        """W <- W + sign·s·B·A, or a ValueError and W untouched when any of them, or the result in
        W's dtype, is not finite: a NaN folded into W cannot be taken out again."""
        what = "merge" if sign > 0 else "unmerge"
        layer = f"LoRADense({self.in_channels} -> {self.out_channels}, weight {list(self.weight.shape)})"
        w = self.weight.asnumpy().astype(np.float32)
        for name, values in (("lora_a (A)", self.mindpet_delta_lora_a.asnumpy()),
                             ("lora_b (B)", self.mindpet_delta_lora_b.asnumpy()), ("weight (W)", w)):
            bad = values.size - np.count_nonzero(np.isfinite(values))
            if bad:
                raise ValueError(f"{layer}: cannot {what}: {name} holds {bad} non-finite (NaN / Inf) values "
                                 f"of {values.size}; the weight is left unchanged")
        new = Tensor(self._folded_weight(w, sign, layer, what), mstype.float32).astype(self.weight.dtype)
        if not np.isfinite(new.astype(mstype.float32).asnumpy()).all():
            raise ValueError(f"{layer}: cannot {what}: W {'+' if sign > 0 else '-'} s·B·A overflows "
                             f"{self.weight.dtype} (s={self.scaling:g}); the weight is left unchanged")
        self.weight.set_data(new)

    def _folded_weight(self, w, sign, layer, what):
        """W + s·B·A, DoRA's m/n ⊙ (W + s·B·A) (n kept for unmerge), or the inverse of either."""
        if not self.use_dora:
            return w + sign * self.delta_weight()
        magnitude = self.mindpet_delta_lora_magnitude.asnumpy().astype(np.float32)
        check_magnitude(layer, what, magnitude)
        if sign > 0:
            merged, self._dora_norm = dora_merged(w, self.delta_weight(), magnitude)
            return merged
        return dora_unmerged(w, self.delta_weight(), magnitude, self._dora_norm)

    def init_dora_magnitude(self):
        """m <- ‖W + s·B·A‖ per output row (float32 math), so the DoRA layer starts as its plain LoRA
        form. Call it after setting W (or A, B) by hand on a fresh cell."""
        w = self.weight.asnumpy().astype(np.float32)
        norms = row_norms(w, self.delta_weight())
        self.mindpet_delta_lora_magnitude.set_data(
            Tensor(norms, mstype.float32).astype(self.mindpet_delta_lora_magnitude.dtype))
        return self

    def init_from_weight(self, method, niter=None):
        """PiSSA / OLoRA start (`lora_init.py`): A, B <- the principal part A0, B0 of W, and W <- the
        residual W - s·B0·A0 (the same Parameter, so the base is changed in place); A0, B0 are kept in
        `lora_init_factors` (float32 numpy) for `plain_lora_factors`. DoRA's magnitude is re-measured.
        ValueError, nothing changed, for a merged cell, a rank above min(in, out), NaN / Inf in W."""
        if method not in WEIGHT_INITS:
            raise ValueError(f"method must be one of {list(WEIGHT_INITS)}, got {_checks.describe(method)}")
        if niter is not None:
            _checks.check_int("niter", niter, minimum=0)
        layer = f"LoRADense({self.in_channels} -> {self.out_channels})"
        if self.merged or self.lora_init_factors is not None:
            raise ValueError(f"{layer}: init_from_weight needs an unmerged cell that was not initialised from its "
                             "weight before")
        if self.lora_rank > min(self.in_channels, self.out_channels):
            raise ValueError(f"{layer}: {method} needs lora_rank <= min(in_channels, out_channels) = "
                             f"{min(self.in_channels, self.out_channels)}, got lora_rank={self.lora_rank}")
        w = self.weight.asnumpy().astype(np.float32)
        if not np.isfinite(w).all():
            raise ValueError(f"{layer}: {method} cannot start from a weight holding NaN / Inf")
        init_a, init_b = weight_init_factors(method, w, self.lora_rank, self.scaling, niter)
        a = Tensor(init_a, mstype.float32).astype(self.mindpet_delta_lora_a.dtype)
        b = Tensor(init_b, mstype.float32).astype(self.mindpet_delta_lora_b.dtype)
        self.mindpet_delta_lora_a.set_data(a)
        self.mindpet_delta_lora_b.set_data(b)
        # the residual from the factors as stored, so W_res + s·B0·A0 is W up to W's own rounding
        self.lora_init_factors = (a.astype(mstype.float32).asnumpy(), b.astype(mstype.float32).asnumpy())
        self.weight.set_data(Tensor(w - self.delta_weight(), mstype.float32).astype(self.weight.dtype))
        if self.use_dora:
            self.init_dora_magnitude()
        return self

    def merge(self):
        """W <- W + s·B·A (float32 math, cast back); the forward then skips the LoRA branch.
        ValueError, W untouched, when A, B or W hold NaN / Inf or the sum overflows W's dtype."""
        if not self.merged:
            self._fold(1.0)
            self.merged = True
            self._recompile()
        return self

    def unmerge(self):
        """W <- W - s·B·A: undo `merge` (exact up to float rounding)."""
        if self.merged:
            self._fold(-1.0)
            self.merged = False
            self._recompile()
        return self

    def _recompile(self):
        invalidate_compiled_graphs(self)  # `merged` is a graph constant

    # ---- semi-auto parallel ----------------------------------------------------------------
    def shard(self, strategy_org_dense_matmul=None, strategy_org_bias_add=None,
              strategy_lora_dropout=None, strategy_lora_a_matmul=None, strategy_lora_b_matmul=None,
              strategy_lora_mul=None, strategy_lora_add=None, strategy_activation=None):
        """Set parallel strategies of the layer's operators (semi-auto / auto parallel only;
        ignored elsewhere). A strategy holds one tuple of positive ints per input of its op, as long
        as that input's rank: ((N, in), (out, in)) splits for the matmuls, ((N, out), (out,)) for the
        bias add, ((N, r), ()) for `strategy_lora_mul` (x·Aᵀ times the scalar s), ((N, out),) for
        the activation's input (MindPet's ((N, out), (N, out)) too; PReLU: its primitive's own
        ((N, out), (channel,))). LogSoftmax cannot be sharded, as in MindPet.

        Every strategy is checked before any is applied. A strategy for an op the layer does not
        have (dropout with lora_dropout=0, bias_add without bias, no activation) is a ValueError.
        A sharded layer computes in the branch form, whose ops carry the strategies."""
        strategies = {
            "strategy_org_dense_matmul": strategy_org_dense_matmul,
            "strategy_org_bias_add": strategy_org_bias_add,
            "strategy_lora_dropout": strategy_lora_dropout,
            "strategy_lora_a_matmul": strategy_lora_a_matmul,
            "strategy_lora_b_matmul": strategy_lora_b_matmul,
            "strategy_lora_mul": strategy_lora_mul,
            "strategy_lora_add": strategy_lora_add,
        }
        layer_ops = {  # argument: (primitive, or why the layer has none; input ranks)
            "strategy_org_dense_matmul": (self.matmul, (2, 2)),
            "strategy_org_bias_add": (self.bias_add if self.has_bias else "has_bias=False", (2, 1)),
            "strategy_lora_dropout": (self.lora_dropout.dropout if self.lora_dropout is not None
                                      else "lora_dropout=0. adds no dropout op", (2,)),
            "strategy_lora_a_matmul": (self.lora_a_matmul, (2, 2)),
            "strategy_lora_b_matmul": (self.lora_b_matmul, (2, 2)),
            "strategy_lora_mul": (self.mul, (2, 0)),
            "strategy_lora_add": (self.add, (2, 2)),
        }
        plan = []  # (primitive, strategy): checked first, applied only when all are valid
        for name, strategy in strategies.items():
            if strategy is None:
                continue
            op, ranks = layer_ops[name]
            if isinstance(op, str):
                raise ValueError(f"{name} was given, but this LoRADense has no such op ({op})")
            plan.append((op, check_strategy(name, strategy, ranks)))
        activation = self.activation
        if strategy_activation is not None:
            activation, act_plan = activation_shards(self, strategy_activation)
            plan += act_plan
        if activation is not self.activation:
            self.activation = activation
        for op, strategy in plan:
            op.shard(strategy)
        if plan:
            self._fold_mode = False  # the folded form's matmuls are not the ones that carry strategies
            self._recompile()
        return self

    def adapter_parameters(self):
        """The trainable LoRA factors this cell holds, ``{LORA_A: A, LORA_B: B}`` (+ ``LORA_MAGNITUDE``
        with DoRA)."""
        params = {LORA_A: self.mindpet_delta_lora_a, LORA_B: self.mindpet_delta_lora_b}
        if self.use_dora:
            params[LORA_MAGNITUDE] = self.mindpet_delta_lora_magnitude
        return params

    def extend_repr(self):
        extra = f", adapters={self.adapter_names()}, active={self.active_adapter!r}" if self.extra_adapters else ""
        return (f"{super().extend_repr()}, lora_rank={self.lora_rank}, lora_alpha={self.lora_alpha}, "
                f"scaling={self.scaling:g}, merged={self.merged}" + (", use_dora=True" if self.use_dora else "") + extra)
