"""What the bottleneck cells (Adapter, LowRankAdapter) share: the non-linearity names MindPet accepts,
one projection x·Wᵀ + b in a compute dtype, and checking a set of shard strategies before any is set.

Kept apart from the cells so that each cell's module shows its math and nothing else."""
import types

from mindspore import Parameter, nn, ops
from mindspore.common.initializer import initializer

from mindpet_lite import _checks
from mindpet_lite.delta.lora_checks import check_init, check_strategy
from mindpet_lite.delta.lora_shard import activation_shards

# MindPet's `non_linearity` names (mindpet.layers.activation) that MindSpore builds without arguments
# (MindPet's 'threshold' needs two; 'softmax2d' needs a 3-D input, and the bottleneck is 2-D)
NON_LINEARITIES = ("softmin", "softmax", "logsoftmax", "relu", "relu6", "rrelu", "silu", "tanh", "tanhshrink",
                   "hardtanh", "gelu", "fast_gelu", "elu", "sigmoid", "softsign", "prelu", "leakyrelu", "hswish",
                   "hsigmoid", "logsigmoid", "softshrink", "hshrink", "mish")


def check_non_linearity(name, value):
    """A MindPet non-linearity name (case as MindPet writes it: 'gelu', 'leakyrelu', ...)."""
    return _checks.check_choice(name, value, NON_LINEARITIES)


def check_channels(**channels):
    """Every value an int > 0 (numpy ints too), returned as Python ints in the order given."""
    return [_checks.check_positive_int(name, value) for name, value in channels.items()]


class Projection(nn.Cell):
    """y = x·Wᵀ + b, W [out, in] and b [out] in ``param_init_type``, the math in ``compute_dtype``
    (MindFormers' Linear, which MindPet's Adapter builds on: same parameter names and layout)."""

    def __init__(self, in_channels, out_channels, weight_init, param_init_type, compute_dtype):
        super().__init__()
        self.weight = Parameter(initializer(weight_init, [out_channels, in_channels], param_init_type), name="weight")
        self.bias = Parameter(initializer("zeros", [out_channels], param_init_type), name="bias")
        self.dtype = compute_dtype
        self.matmul = ops.MatMul(transpose_b=True)
        self.bias_add = ops.Add()
        self.cast = ops.Cast()

    def construct(self, x):
        return self.bias_add(self.matmul(x, self.cast(self.weight, self.dtype)), self.cast(self.bias, self.dtype))

    def ops_for_shard(self, prefix):
        """{argument: (primitive, input ranks)} of this projection's shardable ops."""
        return {f"strategy_matmul_{prefix}": (self.matmul, (2, 2)), f"strategy_bias_{prefix}": (self.bias_add, (2, 1))}


def check_up_init(name, init, shape):
    """An initializer spec for an up-projection (MindPet's default 'normal'; 'zeros' starts at zero effect)."""
    check_init(name, init, shape)
    return init


def plan_shards(owner, strategies, layer_ops):
    """[(primitive, strategy)] of the given strategies (None: not set), each checked against its op's input
    ranks; an op the cell lacks (its entry is a str saying why) is a ValueError naming the argument."""
    plan = []
    for name, strategy in strategies.items():
        if strategy is None:
            continue
        op, ranks = layer_ops[name]
        if isinstance(op, str):
            raise ValueError(f"{name} was given, but this {owner} has no such op ({op})")
        plan.append((op, check_strategy(name, strategy, ranks)))
    return plan


def activation_plan(activation, strategy):
    """(activation to keep, [(primitive, strategy)]) for an activation's strategy, as LoRADense shards its
    own (``lora_shard.activation_shards``: LeakyReLU / tanh GELU become the same math on a primitive)."""
    holder = types.SimpleNamespace(activation=activation, activation_flag=activation is not None)
    return activation_shards(holder, strategy)


def apply_shards(plan):
    for op, strategy in plan:
        op.shard(strategy)


class DenseWithDelta(nn.Dense):
    """An nn.Dense whose output passes a delta cell (``_delta``: an adapter block): what AdapterDense and
    LowRankAdapterDense share. Subclasses set ``compute_dtype`` and ``cast`` and name the delta cell."""

    DELTA_ATTR = None  # the attribute holding the delta cell (its parameter names follow it)

    def _delta(self, h):
        raise NotImplementedError

    def _shard_dense_and_delta(self, strategy_matmul_org, strategy_bias_org, strategy_activation_org,
                               delta_strategies, strategy_non_linearity):
        """`shard` of both subclasses: the dense layer's strategies (``*_org``) and the delta cell's
        (its ``_plan`` / ``_set_non_linear``), every one checked before any is set."""
        name = type(self).__name__
        plan = plan_shards(name, {"strategy_matmul_org": strategy_matmul_org, "strategy_bias_org": strategy_bias_org}, {
            "strategy_matmul_org": (self.matmul, (2, 2)),
            "strategy_bias_org": (self.bias_add if self.has_bias else "has_bias=False", (2, 1))})
        activation = self.activation
        if strategy_activation_org is not None:
            if not self.activation_flag:
                raise ValueError(f"strategy_activation_org was given, but this {name} has no activation")
            activation, act_plan = activation_plan(self.activation, strategy_activation_org)
            plan += act_plan
        delta = getattr(self, self.DELTA_ATTR)
        act, delta_plan = delta._plan(delta_strategies, strategy_non_linearity)  # pylint: disable=protected-access
        if activation is not self.activation:
            self.activation = activation
        delta._set_non_linear(act)  # pylint: disable=protected-access
        apply_shards(plan + delta_plan)
        return self

    @classmethod
    def from_dense(cls, dense, **adapter_kwargs):
        """The cell computing with ``dense``'s own weight and bias Parameters (no copy) and activation."""
        if not isinstance(dense, nn.Dense) or isinstance(dense, DenseWithDelta):
            raise TypeError(f"dense must be a plain mindspore.nn.Dense, got {_checks.describe(dense)}")
        cell = cls(dense.in_channels, dense.out_channels, weight_init="zeros", has_bias=dense.has_bias,
                   activation=dense.activation if dense.activation_flag else None, **adapter_kwargs)
        cell.weight = dense.weight
        if dense.has_bias:
            cell.bias = dense.bias
        return cell

    def construct(self, x):
        ori_dtype, x_shape = x.dtype, x.shape
        h = self.cast(x.reshape(-1, x_shape[-1]), self.compute_dtype)
        h = self.matmul(h, self.cast(self.weight, self.compute_dtype))
        if self.has_bias:
            h = self.bias_add(h, self.cast(self.bias, self.compute_dtype))
        if self.activation_flag:
            h = self.activation(h)
        h = self._delta(h)
        return self.cast(h.reshape(x_shape[:-1] + (self.out_channels,)), ori_dtype)
