"""Sharding a LoRADense's activation as MindPet does: the primitive each activation runs, and the
same math on primitives of its own where MindSpore's cell computes through functional ops."""
from mindspore import nn, ops
from mindspore.ops.primitive import Primitive

from mindpet_lite import _checks
from mindpet_lite.delta.lora_checks import check_strategy

# activations whose one primitive (named here) takes the strategy of the activation's input
UNARY_ACTIVATIONS = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.Tanh: "tanh", nn.Sigmoid: "sigmoid",
                      nn.FastGelu: "fast_gelu", nn.ELU: "elu", nn.Softsign: "softsign", nn.HSwish: "hswish",
                      nn.HSigmoid: "hsigmoid", nn.SoftShrink: "softshrink", nn.HShrink: "hshrink",
                      nn.Mish: "mish", nn.Softmax: "softmax"}


class LeakyReLUPrimitive(nn.Cell):
    """max(alpha·x, x) (min for alpha > 1), as ops.leaky_relu, on primitives of its own to shard."""

    def __init__(self, alpha):
        super().__init__()
        self.alpha = alpha
        self.mul = ops.Mul()
        self.select_op = ops.Maximum() if alpha <= 1 else ops.Minimum()

    def construct(self, x):
        return self.select_op(self.mul(x, self.alpha), x)



def _activation_strategy(name, strategy):
    """`strategy_activation` checked and kept as given: the input's strategy once, ``((N, out),)``, or
    twice, ``((N, out), (N, out))`` as MindPet's tests write it (two different ones are refused: the
    activation has one input)."""
    if isinstance(strategy, tuple) and len(strategy) == 2:
        given = check_strategy(name, strategy, (2, 2))
        if given[0] != given[1]:
            raise ValueError(f"{name} must give the activation input's strategy once or twice the same, got "
                             f"{_checks.describe(strategy)}")
        return given
    return check_strategy(name, strategy, (2,))


def activation_shards(cell, strategy):
    """(activation, [(primitive, strategy)]) for `strategy_activation`, as MindPet shards its
    activations: the primitive it passes the strategy to takes it as given (a unary activation's
    primitive, LogSigmoid's exp / rec / log); LeakyReLU's select op (s, s) and LogSigmoid's scalar
    ops (s, ()), s the input's strategy. LeakyReLU and GELU compute through functional ops in
    MindSpore 2.9, with no primitive of the cell's own: sharding swaps in the same math built on
    a primitive (LeakyReLU keeps MindPet's `select_op` name)."""
    name, act = "strategy_activation", cell.activation
    if not cell.activation_flag:
        raise ValueError(f"{name} was given, but this LoRADense has no activation")
    if isinstance(act, (nn.LogSoftmax, nn.LogSoftmaxExt, ops.LogSoftmax)):
        raise ValueError(f"{name}: activation {type(act).__name__} cannot be sharded (log-softmax reduces over "
                         "the split axis; MindPet refuses it too): apply it after the LoRADense instead")
    if isinstance(act, nn.PReLU):  # input and weight: the primitive's own strategy, as MindPet passes it
        return act, [(act.prelu, check_strategy(name, strategy, (2, 1)))]
    given = _activation_strategy(name, strategy)
    s = given[0]
    if isinstance(act, nn.LeakyReLU):
        act = LeakyReLUPrimitive(act.alpha)
    elif isinstance(act, nn.GELU) and act.approximate == "tanh":
        act = ops.GeLU()  # what ops.gelu(x, approximate='tanh') runs
    if isinstance(act, LeakyReLUPrimitive):
        return act, [(act.select_op, (s, s)), (act.mul, (s, ()))]
    if isinstance(act, nn.LogSigmoid):
        return act, [(act.mul, (s, ())), (act.exp, given), (act.add, (s, ())), (act.rec, given), (act.log, given)]
    if isinstance(act, Primitive):
        return act, [(act, given)]
    for cls, attr in UNARY_ACTIVATIONS.items():
        if isinstance(act, cls):
            return act, [(getattr(act, attr), given)]
    raise ValueError(f"{name}: activation {type(act).__name__} has no primitive LoRADense can shard (it "
                     "computes through functional ops, or is not one of mindspore.nn's); shardable: a "
                     "Primitive, LeakyReLU, tanh GELU, LogSigmoid, PReLU, "
                     f"{', '.join(c.__name__ for c in UNARY_ACTIVATIONS)}")
