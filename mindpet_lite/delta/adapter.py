"""Adapter (Houlsby et al. 2019), a drop-in for MindPet's ``mindpet.delta.adapter``:

    adapter(h) = h + up(act(down(h)))          down: hidden -> bottleneck, up: bottleneck -> hidden
    AdapterDense(x) = adapter(activation(x·Wᵀ + b))

down and up are x·Wᵀ + b projections with MindPet's parameter names
(``mindpet_delta_adapter_block.mindpet_delta_adapter_down_sampler.weight`` [bottleneck, hidden], ...).
MindPet starts both from 'normal' (σ = 0.01) and zero biases: a fresh adapter is close to, not equal to,
the identity; ``up_sampler_init='zeros'`` (an addition) starts it at exactly zero effect, as LoRA's B.
"""
from collections import OrderedDict

from mindspore import nn, ops
from mindspore import dtype as mstype

from mindpet_lite import _checks
from mindpet_lite.delta import bottleneck as _bn
from mindpet_lite.delta.lora_checks import check_activation

ADAPTER_MARK = "mindpet_delta_adapter"  # every Adapter parameter name holds it (freeze_delta's 'adapter')


class AdapterLayer(nn.Cell):
    r"""The adapter block: h + up(act(down(h))).

    Args:
        hidden_size (int): features of h, > 0.
        bottleneck_size (int): features of the bottleneck, > 0. Default 64.
        non_linearity (str): a MindPet activation name ('gelu', 'relu', 'leakyrelu', ...). Default 'gelu'.
        param_init_type (mindspore.dtype): dtype of the parameters (float16, float32, bfloat16).
        compute_dtype (mindspore.dtype): dtype of the math. Default float16, as MindPet.
        up_sampler_init: initializer of the up-projection's weight; 'normal' (MindPet's), 'zeros' for an
            exact identity at the start.

    Inputs:
        - **x** (Tensor) - shape (*, hidden_size).

    Outputs:
        Tensor of the shape and dtype of `x`.

    Raises:
        TypeError: a non-int size, a bad dtype or initializer.
        ValueError: a size <= 0, an unknown non_linearity, an initializer Tensor of the wrong shape.
    """

    def __init__(self, hidden_size, bottleneck_size=64, non_linearity="gelu", param_init_type=mstype.float32,
                 compute_dtype=mstype.float16, up_sampler_init="normal"):
        hidden_size, bottleneck_size = _bn.check_channels(hidden_size=hidden_size, bottleneck_size=bottleneck_size)
        _bn.check_non_linearity("non_linearity", non_linearity)
        param_init_type = _checks.to_float_dtype("param_init_type", param_init_type)
        compute_dtype = _checks.to_float_dtype("compute_dtype", compute_dtype)
        _bn.check_up_init("up_sampler_init", up_sampler_init, (hidden_size, bottleneck_size))
        super().__init__()
        self.hidden_size, self.bottleneck_size = hidden_size, bottleneck_size
        self.non_linearity_name = non_linearity
        self.dtype = compute_dtype
        self.mindpet_delta_adapter_block = nn.SequentialCell(OrderedDict([
            ("mindpet_delta_adapter_down_sampler",
             _bn.Projection(hidden_size, bottleneck_size, "normal", param_init_type, compute_dtype)),
            ("mindpet_delta_adapter_non_linear", nn.get_activation(non_linearity)),
            ("mindpet_delta_adapter_up_sampler",
             _bn.Projection(bottleneck_size, hidden_size, up_sampler_init, param_init_type, compute_dtype)),
        ]))
        self.residual_add = ops.Add()
        self.cast = ops.Cast()

    def construct(self, x):
        ori_dtype, x_shape = x.dtype, x.shape
        h = self.cast(x.reshape(-1, x_shape[-1]), self.dtype)
        block = self.mindpet_delta_adapter_block
        z = block.mindpet_delta_adapter_down_sampler(h)
        z = block.mindpet_delta_adapter_non_linear(z)
        z = block.mindpet_delta_adapter_up_sampler(z)
        out = self.residual_add(h, z)
        return self.cast(out.reshape(x_shape), ori_dtype)

    def shard(self, strategy_matmul_down_sampler=None, strategy_bias_down_sampler=None, strategy_non_linearity=None,
              strategy_matmul_up_sampler=None, strategy_bias_up_sampler=None, strategy_residual_add=None):
        """MindPet's strategy names; every strategy is checked before any is set (semi-auto / auto parallel)."""
        act, plan = self._plan({
            "strategy_matmul_down_sampler": strategy_matmul_down_sampler,
            "strategy_bias_down_sampler": strategy_bias_down_sampler,
            "strategy_matmul_up_sampler": strategy_matmul_up_sampler,
            "strategy_bias_up_sampler": strategy_bias_up_sampler,
            "strategy_residual_add": strategy_residual_add}, strategy_non_linearity)
        self._set_non_linear(act)
        _bn.apply_shards(plan)
        return self

    def _plan(self, strategies, strategy_non_linearity):
        plan = _bn.plan_shards(type(self).__name__, strategies, self._shard_ops())
        act = self.mindpet_delta_adapter_block.mindpet_delta_adapter_non_linear
        if strategy_non_linearity is not None:
            act, act_plan = _bn.activation_plan(act, strategy_non_linearity)
            plan += act_plan
        return act, plan

    def _set_non_linear(self, act):
        block = self.mindpet_delta_adapter_block
        if act is not block.mindpet_delta_adapter_non_linear:
            block.mindpet_delta_adapter_non_linear = act

    def _shard_ops(self):
        block = self.mindpet_delta_adapter_block
        return {**block.mindpet_delta_adapter_down_sampler.ops_for_shard("down_sampler"),
                **block.mindpet_delta_adapter_up_sampler.ops_for_shard("up_sampler"),
                "strategy_residual_add": (self.residual_add, (2, 2))}


class AdapterDense(_bn.DenseWithDelta):
    r"""A dense layer followed by an adapter: adapter(activation(x·Wᵀ + b)).

    Args:
        in_channels (int), out_channels (int): the dense layer's features.
        weight_init, bias_init, has_bias, activation: as `mindspore.nn.Dense` (MindPet's defaults).
        bottleneck_size, non_linearity, param_init_type, compute_dtype, up_sampler_init: the adapter's,
            see `AdapterLayer` (hidden_size = out_channels); compute_dtype is also the dense math's.

    Inputs:
        - **x** (Tensor) - shape (*, in_channels).

    Outputs:
        Tensor of shape (*, out_channels), in the dtype of `x`.

    Raises:
        TypeError / ValueError: a bad argument, named (see `AdapterLayer`; has_bias must be a bool).
    """

    def __init__(self, in_channels, out_channels, weight_init="normal", bias_init="zeros", has_bias=True,
                 activation=None, bottleneck_size=64, non_linearity="gelu", param_init_type=mstype.float32,
                 compute_dtype=mstype.float16, up_sampler_init="normal"):
        in_channels, out_channels = _bn.check_channels(in_channels=in_channels, out_channels=out_channels)
        _checks.check_bool("has_bias", has_bias)
        check_activation(activation)
        adapter = AdapterLayer(out_channels, bottleneck_size, non_linearity, param_init_type, compute_dtype,
                               up_sampler_init)  # every adapter check before the dense layer is built
        super().__init__(in_channels, out_channels, weight_init=weight_init, bias_init=bias_init,
                         has_bias=has_bias, activation=activation)
        self.mindpet_delta_adapter = adapter
        self.bottleneck_size = adapter.bottleneck_size
        self.compute_dtype = adapter.dtype
        self.act_name = activation
        self.cast = ops.Cast()

    DELTA_ATTR = "mindpet_delta_adapter"

    def _delta(self, h):
        return self.mindpet_delta_adapter(h)

    def shard(self, strategy_matmul_org=None, strategy_bias_org=None, strategy_activation_org=None,
              strategy_matmul_down_sampler=None, strategy_bias_down_sampler=None, strategy_non_linearity=None,
              strategy_matmul_up_sampler=None, strategy_bias_up_sampler=None, strategy_residual_add=None):
        """MindPet's strategy names: the dense layer's (``*_org``) and the adapter's (`AdapterLayer.shard`).
        Every strategy is checked before any is set."""
        return self._shard_dense_and_delta(strategy_matmul_org, strategy_bias_org, strategy_activation_org, {
            "strategy_matmul_down_sampler": strategy_matmul_down_sampler,
            "strategy_bias_down_sampler": strategy_bias_down_sampler,
            "strategy_matmul_up_sampler": strategy_matmul_up_sampler,
            "strategy_bias_up_sampler": strategy_bias_up_sampler,
            "strategy_residual_add": strategy_residual_add}, strategy_non_linearity)
