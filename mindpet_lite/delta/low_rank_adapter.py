"""LowRankAdapter (Compacter's low-rank projections, Mahabadi et al. 2021), a drop-in for MindPet's
``mindpet.delta.low_rank_adapter``:

    lowrank(x) = x·(L·R) + b                   L [in, k], R [k, out]   (k = low_rank_size)
    adapter(h) = h + up(act(down(h)))          down: hidden -> hidden // reduction_factor, up: back
    LowRankAdapterDense(x) = adapter(activation(x·Wᵀ + b))

Parameter names as MindPet's (``mindpet_delta_low_rank_adapter_down_sampler.mindpet_delta_low_rank_adapter_weight_left``,
``..._weight_right``, ``.bias``). MindPet 1.0.4's forward fails on MindSpore 2.9 (its LowRankLinear
calls a ``self.cast`` it never creates): this is the computation its docstrings describe.
``up_sampler_init='zeros'`` (an addition) zeroes the up-projection's right factor, so a fresh adapter is
exactly the identity; MindPet starts every factor from ``low_rank_w_init`` (xavier_uniform).
"""
from mindspore import Parameter, Tensor, nn, ops
from mindspore import dtype as mstype
from mindspore.common.initializer import Initializer, initializer

from mindpet_lite import _checks
from mindpet_lite.delta import bottleneck as _bn
from mindpet_lite.delta.lora_checks import check_activation, check_init

LOW_RANK_ADAPTER_MARK = "mindpet_delta_low_rank_adapter"  # freeze_delta's 'low_rank_adapter'
_W = LOW_RANK_ADAPTER_MARK + "_weight"


class LowRankLinear(nn.Cell):
    r"""y = x·(L·R) + b: a dense map whose [in, out] weight is a rank-``rank`` product (MindPet's LowRankLinear).

    Args:
        in_channels, out_channels, rank (int): > 0; L is [in_channels, rank], R [rank, out_channels].
        weight_init: initializer of L (and of R when right_init is None). bias_init: of b.
        has_bias (bool), param_init_type, compute_dtype (mindspore.dtype): as the adapter cells'.
        right_init: initializer of R (an addition: 'zeros' makes the map start at 0).

    Inputs:
        - **x** (Tensor) - shape (N, in_channels), in compute_dtype.

    Outputs:
        Tensor of shape (N, out_channels).

    Raises:
        TypeError / ValueError: a bad size, initializer or dtype, named.
    """

    def __init__(self, in_channels, out_channels, rank=1, weight_init="normal", bias_init="zeros", has_bias=True,
                 param_init_type=mstype.float32, compute_dtype=mstype.float16, right_init=None):
        in_channels, out_channels, rank = _bn.check_channels(in_channels=in_channels, out_channels=out_channels,
                                                             rank=rank)
        _checks.check_bool("has_bias", has_bias)
        check_init("weight_init", weight_init, (in_channels, rank))
        check_init("bias_init", bias_init, (out_channels,))
        right_init = weight_init if right_init is None else right_init
        check_init("right_init", right_init, (rank, out_channels))
        param_init_type = _checks.to_float_dtype("param_init_type", param_init_type)
        compute_dtype = _checks.to_float_dtype("compute_dtype", compute_dtype)
        super().__init__()
        self.in_channels, self.out_channels, self.rank, self.has_bias = in_channels, out_channels, rank, has_bias
        self.mindpet_delta_low_rank_adapter_weight_left = Parameter(
            _init(weight_init, [in_channels, rank], param_init_type), name=_W + "_left")
        self.mindpet_delta_low_rank_adapter_weight_right = Parameter(
            _init(right_init, [rank, out_channels], param_init_type), name=_W + "_right")
        self.bias = Parameter(_init(bias_init, [out_channels], param_init_type), name="bias") if has_bias else None
        self.dtype = compute_dtype
        self.matmul_weight = ops.MatMul()
        self.matmul_input = ops.MatMul()
        self.bias_add = ops.Add()
        self.cast = ops.Cast()

    def construct(self, x):
        weight = self.matmul_weight(self.cast(self.mindpet_delta_low_rank_adapter_weight_left, self.dtype),
                                    self.cast(self.mindpet_delta_low_rank_adapter_weight_right, self.dtype))
        y = self.matmul_input(x, weight)
        if self.has_bias:
            y = self.bias_add(y, self.cast(self.bias, self.dtype))
        return y

    def ops_for_shard(self, prefix):
        return {f"strategy_matmul_{prefix}_weight": (self.matmul_weight, (2, 2)),
                f"strategy_matmul_{prefix}_input": (self.matmul_input, (2, 2)),
                f"strategy_bias_{prefix}": (self.bias_add if self.has_bias else "has_bias=False", (2, 1))}

    def shard(self, strategy_matmul_weight, strategy_matmul_input, strategy_bias=None):
        plan = _bn.plan_shards("LowRankLinear", {"strategy_matmul_weight": strategy_matmul_weight,
                                                 "strategy_matmul_input": strategy_matmul_input,
                                                 "strategy_bias": strategy_bias}, {
            "strategy_matmul_weight": (self.matmul_weight, (2, 2)), "strategy_matmul_input": (self.matmul_input, (2, 2)),
            "strategy_bias": (self.bias_add if self.has_bias else "has_bias=False", (2, 1))})
        _bn.apply_shards(plan)
        return self


def _init(spec, shape, dtype):
    return spec.astype(dtype) if isinstance(spec, Tensor) else initializer(spec, shape, dtype)


class LowRankAdapterLayer(nn.Cell):
    r"""The low-rank adapter block: h + up(act(down(h))), down and up `LowRankLinear` maps.

    Args:
        hidden_size (int): features of h, > 0.
        reduction_factor (int): bottleneck = hidden_size // reduction_factor; an int in [1, hidden_size].
        low_rank_size (int): k, the rank of each projection's weight, > 0. Default 1.
        low_rank_w_init (Union[str, Initializer]): initializer of the factors. Default 'xavier_uniform'.
        non_linearity (str): a MindPet activation name. Default 'gelu'.
        param_init_type, compute_dtype (mindspore.dtype): float16, float32 or bfloat16 (compute default
            float16, as MindPet).
        up_sampler_init: initializer of the up-projection's right factor; None (MindPet's) uses
            low_rank_w_init, 'zeros' starts at an exact identity.

    Inputs:
        - **x** (Tensor) - shape (*, hidden_size).

    Outputs:
        Tensor of the shape and dtype of `x`.

    Raises:
        TypeError: a non-int size, low_rank_w_init neither a str nor an Initializer, a bad dtype.
        ValueError: a size <= 0, reduction_factor > hidden_size, an unknown non_linearity.
    """

    def __init__(self, hidden_size, reduction_factor, low_rank_size=1, low_rank_w_init="xavier_uniform",
                 non_linearity="gelu", param_init_type=mstype.float32, compute_dtype=mstype.float16,
                 up_sampler_init=None):
        hidden_size, reduction_factor, low_rank_size = _bn.check_channels(
            hidden_size=hidden_size, reduction_factor=reduction_factor, low_rank_size=low_rank_size)
        if reduction_factor > hidden_size:
            raise ValueError(f"reduction_factor must be an int <= hidden_size ({hidden_size}), got {reduction_factor} "
                             "(the bottleneck hidden_size // reduction_factor would be empty)")
        if not isinstance(low_rank_w_init, (str, Initializer)):
            raise TypeError(f"low_rank_w_init must be a str or an Initializer, got {_checks.describe(low_rank_w_init)}")
        _bn.check_non_linearity("non_linearity", non_linearity)
        bottleneck = hidden_size // reduction_factor
        common = dict(rank=low_rank_size, weight_init=low_rank_w_init, param_init_type=param_init_type,
                      compute_dtype=compute_dtype)
        down = LowRankLinear(hidden_size, bottleneck, **common)
        up = LowRankLinear(bottleneck, hidden_size, right_init=up_sampler_init, **common)
        super().__init__()
        self.hidden_size, self.bottleneck_size = hidden_size, bottleneck
        self.non_linearity = non_linearity
        self.dtype = down.dtype
        self.mindpet_delta_low_rank_adapter_down_sampler = down
        self.mindpet_delta_low_rank_adapter_non_linear = nn.get_activation(non_linearity)
        self.mindpet_delta_low_rank_adapter_up_sampler = up
        self.residual_add = ops.Add()
        self.cast = ops.Cast()

    def construct(self, x):
        ori_dtype, x_shape = x.dtype, x.shape
        h = self.cast(x.reshape(-1, x_shape[-1]), self.dtype)
        z = self.mindpet_delta_low_rank_adapter_down_sampler(h)
        z = self.mindpet_delta_low_rank_adapter_non_linear(z)
        z = self.mindpet_delta_low_rank_adapter_up_sampler(z)
        out = self.residual_add(h, z)
        return self.cast(out.reshape(x_shape), ori_dtype)

    def _shard_ops(self):
        return {**self.mindpet_delta_low_rank_adapter_down_sampler.ops_for_shard("down_sampler"),
                **self.mindpet_delta_low_rank_adapter_up_sampler.ops_for_shard("up_sampler"),
                "strategy_residual_add": (self.residual_add, (2, 2))}

    def _plan(self, strategies, strategy_non_linearity):
        plan = _bn.plan_shards(type(self).__name__, strategies, self._shard_ops())
        act = self.mindpet_delta_low_rank_adapter_non_linear
        if strategy_non_linearity is not None:
            act, act_plan = _bn.activation_plan(act, strategy_non_linearity)
            plan += act_plan
        return act, plan

    def shard(self, strategy_matmul_down_sampler_weight=None, strategy_matmul_down_sampler_input=None,
              strategy_bias_down_sampler=None, strategy_non_linearity=None, strategy_matmul_up_sampler_weight=None,
              strategy_matmul_up_sampler_input=None, strategy_bias_up_sampler=None, strategy_residual_add=None):
        """MindPet's strategy names; every strategy is checked before any is set."""
        act, plan = self._plan({
            "strategy_matmul_down_sampler_weight": strategy_matmul_down_sampler_weight,
            "strategy_matmul_down_sampler_input": strategy_matmul_down_sampler_input,
            "strategy_bias_down_sampler": strategy_bias_down_sampler,
            "strategy_matmul_up_sampler_weight": strategy_matmul_up_sampler_weight,
            "strategy_matmul_up_sampler_input": strategy_matmul_up_sampler_input,
            "strategy_bias_up_sampler": strategy_bias_up_sampler,
            "strategy_residual_add": strategy_residual_add}, strategy_non_linearity)
        self._set_non_linear(act)
        _bn.apply_shards(plan)
        return self

    def _set_non_linear(self, act):
        if act is not self.mindpet_delta_low_rank_adapter_non_linear:
            self.mindpet_delta_low_rank_adapter_non_linear = act


class LowRankAdapterDense(_bn.DenseWithDelta):
    r"""A dense layer followed by a low-rank adapter: adapter(activation(x·Wᵀ + b)).

    Args:
        in_channels (int), out_channels (int): the dense layer's features.
        weight_init, bias_init, has_bias, activation: as `mindspore.nn.Dense` (MindPet's defaults).
        reduction_factor, low_rank_size, low_rank_w_init, non_linearity, param_init_type, compute_dtype,
            up_sampler_init: the adapter's, see `LowRankAdapterLayer` (hidden_size = out_channels).

    Inputs:
        - **x** (Tensor) - shape (*, in_channels).

    Outputs:
        Tensor of shape (*, out_channels), in the dtype of `x`.

    Raises:
        TypeError / ValueError: a bad argument, named (see `LowRankAdapterLayer`).
    """

    def __init__(self, in_channels, out_channels, weight_init="normal", bias_init="zeros", has_bias=True,
                 activation=None, reduction_factor=1, low_rank_size=1, low_rank_w_init="xavier_uniform",
                 non_linearity="gelu", param_init_type=mstype.float32, compute_dtype=mstype.float16,
                 up_sampler_init=None):
        in_channels, out_channels = _bn.check_channels(in_channels=in_channels, out_channels=out_channels)
        _checks.check_bool("has_bias", has_bias)
        check_activation(activation)
        adapter = LowRankAdapterLayer(out_channels, reduction_factor, low_rank_size, low_rank_w_init, non_linearity,
                                      param_init_type, compute_dtype, up_sampler_init)
        super().__init__(in_channels, out_channels, weight_init=weight_init, bias_init=bias_init,
                         has_bias=has_bias, activation=activation)
        self.mindpet_delta_low_rank_adapter = adapter
        self.compute_dtype = adapter.dtype
        self.act_name = activation
        self.cast = ops.Cast()

    DELTA_ATTR = "mindpet_delta_low_rank_adapter"

    def _delta(self, h):
        return self.mindpet_delta_low_rank_adapter(h)

    def shard(self, strategy_matmul_org=None, strategy_bias_org=None, strategy_activation_org=None,
              strategy_matmul_down_sampler_weight=None, strategy_matmul_down_sampler_input=None,
              strategy_bias_down_sampler=None, strategy_non_linearity=None, strategy_matmul_up_sampler_weight=None,
              strategy_matmul_up_sampler_input=None, strategy_bias_up_sampler=None, strategy_residual_add=None):
        """MindPet's strategy names: the dense layer's (``*_org``) and the adapter's. Every strategy is
        checked before any is set."""
        return self._shard_dense_and_delta(strategy_matmul_org, strategy_bias_org, strategy_activation_org, {
            "strategy_matmul_down_sampler_weight": strategy_matmul_down_sampler_weight,
            "strategy_matmul_down_sampler_input": strategy_matmul_down_sampler_input,
            "strategy_bias_down_sampler": strategy_bias_down_sampler,
            "strategy_matmul_up_sampler_weight": strategy_matmul_up_sampler_weight,
            "strategy_matmul_up_sampler_input": strategy_matmul_up_sampler_input,
            "strategy_bias_up_sampler": strategy_bias_up_sampler,
            "strategy_residual_add": strategy_residual_add}, strategy_non_linearity)
