"""LoRADense: a dense layer with a low-rank trainable update, a drop-in for MindPet's LoRADense.

    y = activation(x·Wᵀ + b + s·(dropout(x)·Aᵀ)·Bᵀ),   s = alpha / rank  (alpha / sqrt(rank) with rsLoRA)

A is [rank, in] (HeUniform init), B is [out, rank] (zeros), so a fresh layer equals its base Dense.
The layer knows no config and no file: `pet.get_pet_model` decides where it goes.

Two ways to compute the same function, chosen per call from the static shapes (benchmarks/README.md):

- branch:  x·Wᵀ + ((x·Aᵀ)·s)·Bᵀ — the textbook form; right when there are few rows (decoding).
- folded:  x·(W + (s·B)·A)ᵀ, with a hand-written backward that gives dx = dy·(W + s·B·A) and the LoRA
  gradients through the narrow [N, r] products (dA = s·(dy·B)ᵀ·x, dB = s·dyᵀ·(x·Aᵀ)), so no [out, in]
  weight gradient is formed for a frozen W. On CPU the branch's skinny [N, in]x[in, r] matmul, its
  [N, out] add and their backward twins cost ~3–4% of the main matmul each; folding replaces them by
  [out, in] element-wise work, which is cheaper whenever N is large next to in·out / (in + 4·out).
  Used for float32 compute without dropout (folding in float16/bfloat16 would round s·B·A to W's ulp).
"""
import math
import numbers

import numpy as np
from mindspore import Parameter, Tensor, nn, ops
from mindspore import dtype as mstype
from mindspore.common.initializer import HeUniform, Initializer, initializer
from mindspore.ops.primitive import Primitive

from mindpet_lite import _checks

LORA_MARK = "mindpet_delta_lora_"  # MindPet's parameter names: every LoRA factor's name holds it
LORA_A = LORA_MARK + "a"
LORA_B = LORA_MARK + "b"

_INIT_TYPES = (str, numbers.Number, Tensor, Initializer)


def lora_scaling(lora_alpha, lora_rank, use_rslora=False):
    """s = alpha / rank, or alpha / sqrt(rank) with rsLoRA: the one place the formula is written."""
    return lora_alpha / (math.sqrt(lora_rank) if use_rslora else lora_rank)


def _check_init(name, init, shape):
    """An initializer spec `initializer()` accepts; a Tensor must already have the right shape."""
    if isinstance(init, bool) or not isinstance(init, _INIT_TYPES):
        raise TypeError(f"{name} must be a Tensor, a str, an Initializer or a number, got {_checks.describe(init)}")
    if isinstance(init, Tensor) and tuple(init.shape) != tuple(shape):
        raise ValueError(f"{name} must be a 2-D Tensor of shape {list(shape)}, got shape {list(init.shape)}")
    if isinstance(init, str):
        try:
            initializer(init, [1, 1])  # lazy: only resolves the name
        except ValueError as err:
            raise ValueError(f"{name} must name a mindspore initializer ('normal', 'zeros', 'he_uniform', ...), "
                             f"got {_checks.describe(init)}") from err


def _init(init, shape, dtype):
    """initializer() for specs; a Tensor keeps its values but takes the parameter dtype."""
    if isinstance(init, Tensor):
        return init.astype(dtype)
    return initializer(init, shape, dtype)


def _check_activation(activation):
    """None, a name nn.get_activation knows, a Cell or a Primitive."""
    if activation is None or isinstance(activation, (nn.Cell, Primitive)):
        return
    if not isinstance(activation, str):
        raise TypeError("activation must be a str name, a Cell, a Primitive or None, "
                        f"got {_checks.describe(activation)}")
    try:
        nn.get_activation(activation)
    except KeyError as err:
        raise ValueError(f"activation must be a name that mindspore.nn.get_activation knows, "
                         f"got {_checks.describe(activation)}") from err


def _no_hook(cell, inputs):  # pylint: disable=unused-argument
    return None


def invalidate_compiled_graphs(cell):
    """Make every compiled graph that holds `cell` recompile on its next call.

    Graph-mode constants (LoRADense.merged, a swapped sub-cell) are baked into compiled graphs, and
    the parents of a cell are not known to it. MindSpore keys its graph cache on a global hook
    version, which adding and removing a hook bumps: that is the one switch that reaches them."""
    cell.register_forward_pre_hook(_no_hook).remove()


def _fold_pays(rows, in_channels, out_channels):
    """Forward element traffic of the branch (read x for x·Aᵀ, write h·Bᵀ, the add) against the
    fold's (write B·A, read W and it, write W + s·B·A). Training favours the fold even more."""
    return rows * (in_channels + 4 * out_channels) > 4 * in_channels * out_channels


class _FoldedLoRAMatMul(nn.Cell):
    """y = x·(W + s·B·A)ᵀ with the LoRA backward through the narrow products.

    Gradients returned for every input; those nobody asks for (a frozen W's dW = dyᵀ·x) are pruned
    from the compiled graph, so a frozen weight costs no [out, in] matmul."""

    def __init__(self, scaling):
        super().__init__()
        self.scaling = scaling
        self.matmul = ops.MatMul()
        self.matmul_tb = ops.MatMul(transpose_b=True)
        self.matmul_ta = ops.MatMul(transpose_a=True)
        self.transpose = ops.Transpose()

    def construct(self, x, weight, lora_a, lora_b):
        folded = weight + self.matmul(lora_b * self.scaling, lora_a)  # [out, r]x[r, in]
        return self.matmul_tb(x, folded)

    def bprop(self, x, weight, lora_a, lora_b, out, dout):  # pylint: disable=unused-argument
        b_scaled = lora_b * self.scaling
        dx = self.matmul(dout, weight + self.matmul(b_scaled, lora_a))  # W + s·B·A is shared with construct
        d_weight = self.matmul_ta(dout, x)  # pruned when W is frozen
        # the narrow products as [r, N]·[N, *] with the small operand transposed first: on CPU a
        # transpose_a MatMul over the [N, *] operand costs 1.5-2.5x as much (benchmarks/README.md)
        g_t = self.transpose(self.matmul(dout, b_scaled), (1, 0))  # (s·dy·B)ᵀ: [r, N]
        d_a = self.matmul(g_t, x)  # [r, in]
        h_t = self.transpose(self.matmul_tb(x, lora_a), (1, 0))  # (x·Aᵀ)ᵀ: [r, N]
        d_b = self.transpose(self.matmul(h_t, dout) * self.scaling, (1, 0))  # s·(hᵀ·dy)ᵀ: [out, r]
        return dx, d_weight, d_a, d_b


class LoRADense(nn.Dense):
    r"""Dense layer plus a trainable low-rank update, for LoRA fine-tuning.

    Args:
        in_channels (int): input features.
        out_channels (int): output features.
        lora_rank (int): rank r of the update, > 0.
        lora_alpha (Union[int, float]): numerator of the scaling alpha / r, not 0.
        lora_dropout (float): dropout on the LoRA branch input, in [0, 1). 0 adds no op to the graph.
        lora_a_init, lora_b_init: anything `mindspore.common.initializer.initializer` takes; a Tensor
            must have shape [lora_rank, in_channels] (A) or [out_channels, lora_rank] (B).
        param_init_type (mindspore.dtype): dtype of A and B (float16, float32 or bfloat16).
        compute_dtype (mindspore.dtype): dtype of the matmuls (float16, float32 or bfloat16).
        use_rslora (bool): scale by alpha / sqrt(r) instead of alpha / r.
        **kwargs: passed to `nn.Dense` (weight_init, bias_init, has_bias, activation, dtype).

    Inputs:
        - **x** (Tensor) - shape (*, in_channels), rank >= 2.

    Outputs:
        Tensor of shape (*, out_channels), in the dtype of `x`.

    Raises:
        TypeError: a wrongly typed lora_rank, lora_alpha, lora_dropout, dtype, init or activation.
        ValueError: lora_rank <= 0, lora_alpha == 0, lora_dropout outside [0, 1), an init Tensor of
            the wrong shape, an unknown activation name.
    """

    def __init__(self, in_channels, out_channels, lora_rank, lora_alpha, lora_dropout=0.,
                 lora_a_init=HeUniform(negative_slope=math.sqrt(5)), lora_b_init="zeros",
                 param_init_type=mstype.float32, compute_dtype=mstype.float16, use_rslora=False,
                 **kwargs):
        # every check before anything is built
        _checks.check_positive_int("lora_rank", lora_rank)
        _checks.check_lora_alpha("lora_alpha", lora_alpha)
        _checks.check_dropout("lora_dropout", lora_dropout)
        _checks.check_bool("use_rslora", use_rslora)
        param_init_type = _checks.to_float_dtype("param_init_type", param_init_type)
        compute_dtype = _checks.to_float_dtype("compute_dtype", compute_dtype)
        _check_activation(kwargs.get("activation"))
        if _checks.is_int(in_channels) and _checks.is_int(out_channels):
            _check_init("lora_a_init", lora_a_init, (lora_rank, in_channels))
            _check_init("lora_b_init", lora_b_init, (out_channels, lora_rank))
        super().__init__(in_channels, out_channels, **kwargs)

        self.lora_rank = lora_rank
        self.lora_alpha = lora_alpha
        self.use_rslora = use_rslora
        self.scaling = lora_scaling(lora_alpha, lora_rank, use_rslora)
        self.dtype = compute_dtype
        self.merged = False
        self.mindpet_delta_lora_a = Parameter(_init(lora_a_init, [lora_rank, in_channels], param_init_type),
                                              name=LORA_A)
        self.mindpet_delta_lora_b = Parameter(_init(lora_b_init, [out_channels, lora_rank], param_init_type),
                                              name=LORA_B)

        self.lora_dropout = nn.Dropout(p=lora_dropout) if lora_dropout > 0 else None
        # None: choose per call from the shapes; True / False: force the folded / branch form
        self._fold_mode = None
        self.folded_matmul = _FoldedLoRAMatMul(self.scaling)
        self.cast = ops.Cast()
        self.lora_a_matmul = ops.MatMul(transpose_b=True)
        self.lora_b_matmul = ops.MatMul(transpose_b=True)
        self.mul = ops.Mul()
        self.add = ops.Add()

    @classmethod
    def from_dense(cls, dense, lora_rank, lora_alpha, lora_dropout=0.,
                   lora_a_init=HeUniform(negative_slope=math.sqrt(5)), lora_b_init="zeros",
                   param_init_type=None, compute_dtype=None, use_rslora=False):
        """Wrap an existing nn.Dense: the same weight and bias Parameter objects (no copy), its
        activation; param_init_type and compute_dtype default to the weight's dtype."""
        if not isinstance(dense, nn.Dense):
            raise TypeError(f"dense must be a mindspore.nn.Dense, got {_checks.describe(dense)}")
        wdtype = dense.weight.dtype
        # float64 weights etc. are not LoRA dtypes: let the dtype check name them
        param_init_type = wdtype if param_init_type is None else param_init_type
        compute_dtype = wdtype if compute_dtype is None else compute_dtype
        activation = dense.activation if dense.activation_flag else None
        cell = cls(dense.in_channels, dense.out_channels, lora_rank, lora_alpha, lora_dropout,
                   lora_a_init, lora_b_init, param_init_type, compute_dtype, use_rslora,
                   has_bias=dense.has_bias, activation=activation,
                   weight_init="zeros", bias_init="zeros", dtype=wdtype)
        cell.weight = dense.weight
        if dense.has_bias:
            cell.bias = dense.bias
        return cell

    def construct(self, x):
        ori_dtype = x.dtype
        x_shape = self.shape_op(x)
        if len(x_shape) < 2:
            raise ValueError(f"LoRADense input must have rank >= 2, got shape {x_shape}")
        if ori_dtype != self.dtype:  # dtypes are graph constants: equal dtypes add no Cast op
            x = self.cast(x, self.dtype)
        if len(x_shape) != 2:
            x = self.reshape(x, (-1, x_shape[-1]))
        weight = self._as_compute(self.weight)
        if self.merged:
            out = self.matmul(x, weight)
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

    def _as_compute(self, param):
        if param.dtype != self.dtype:
            return self.cast(param, self.dtype)
        return param

    def _use_fold(self, x_shape):
        """Folded form for float32 compute, no dropout and enough rows (static shapes only)."""
        if self._fold_mode is not None:
            return self._fold_mode and self.lora_dropout is None
        if self.lora_dropout is not None or self.dtype != mstype.float32:
            return False
        rows = 1
        for dim in x_shape[:-1]:
            if dim is None or dim < 0:
                return False
            rows = rows * dim
        return _fold_pays(rows, self.in_channels, self.out_channels)

    # ---- merge / unmerge -------------------------------------------------------------------
    def delta_weight(self):
        """s·B·A as a float32 numpy array of the weight's shape [out, in]."""
        a = self.mindpet_delta_lora_a.asnumpy().astype(np.float32)
        b = self.mindpet_delta_lora_b.asnumpy().astype(np.float32)
        return np.float32(self.scaling) * (b @ a)

    def _fold(self, sign):
        w = self.weight.asnumpy().astype(np.float32) + sign * self.delta_weight()
        self.weight.set_data(Tensor(w, mstype.float32).astype(self.weight.dtype))

    def merge(self):
        """W <- W + s·B·A (float32 math, cast back); the forward then skips the LoRA branch."""
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
        ignored elsewhere). `strategy_lora_mul` applies to the [N, rank] product x·Aᵀ times s."""
        strategies = {
            "strategy_org_dense_matmul": strategy_org_dense_matmul,
            "strategy_org_bias_add": strategy_org_bias_add,
            "strategy_lora_dropout": strategy_lora_dropout,
            "strategy_lora_a_matmul": strategy_lora_a_matmul,
            "strategy_lora_b_matmul": strategy_lora_b_matmul,
            "strategy_lora_mul": strategy_lora_mul,
            "strategy_lora_add": strategy_lora_add,
            "strategy_activation": strategy_activation,
        }
        for name, value in strategies.items():
            if value is not None and not isinstance(value, tuple):
                raise TypeError(f"{name} must be a tuple of tuples or None, got {_checks.describe(value)}")
        act_prims = self._activation_primitives() if strategy_activation is not None else []
        self.matmul.shard(strategy_org_dense_matmul)
        if self.has_bias:
            self.bias_add.shard(strategy_org_bias_add)
        if self.lora_dropout is not None:
            self.lora_dropout.dropout.shard(strategy_lora_dropout)
        self.lora_a_matmul.shard(strategy_lora_a_matmul)
        self.lora_b_matmul.shard(strategy_lora_b_matmul)
        self.mul.shard(strategy_lora_mul)
        self.add.shard(strategy_lora_add)
        for prim in act_prims:
            prim.shard(strategy_activation)
        return self

    def _activation_primitives(self):
        act = self.activation
        if not self.activation_flag:
            raise ValueError("strategy_activation was given but the LoRADense has no activation")
        if isinstance(act, (nn.LogSoftmax, ops.LogSoftmax)):
            raise ValueError(f"activation {type(act).__name__} cannot be sharded: log-softmax reduces over "
                             "the split axis; use it after the LoRADense instead")
        if isinstance(act, Primitive):
            return [act]
        prims = [v for v in vars(act).get("_primitives", {}).values() if isinstance(v, Primitive)]
        if not prims:
            raise ValueError(f"activation {type(act).__name__} has no primitive to shard")
        return prims

    def adapter_parameters(self):
        """The trainable LoRA factors this cell holds, ``{LORA_A: A, LORA_B: B}``."""
        return {LORA_A: self.mindpet_delta_lora_a, LORA_B: self.mindpet_delta_lora_b}

    def extend_repr(self):
        return (f"{super().extend_repr()}, lora_rank={self.lora_rank}, lora_alpha={self.lora_alpha}, "
                f"scaling={self.scaling:g}, merged={self.merged}")
