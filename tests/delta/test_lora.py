"""LoRADense against the numpy formula, its argument checks, merge, from_dense and shard."""
import fractions
import logging
import math
import os
import subprocess
import sys

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops
from mindspore.common.initializer import HeUniform, Normal

from mindpet_lite.delta import LoRADense
from tests import reference as ref
from tests.conftest import REPO

F32, F16 = ms.float32, ms.float16


def _rand(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _layer(n_in=12, n_out=10, rank=4, alpha=8, has_bias=True, activation=None, compute=F32, **kw):
    return LoRADense(n_in, n_out, rank, alpha, has_bias=has_bias, activation=activation,
                     compute_dtype=compute,
                     weight_init=Tensor(_rand(n_out, n_in, seed=1, scale=0.3)),
                     bias_init=Tensor(_rand(n_out, seed=2)) if has_bias else "zeros",
                     lora_a_init=Tensor(_rand(rank, n_in, seed=3, scale=0.3)),
                     lora_b_init=Tensor(_rand(n_out, rank, seed=4, scale=0.3)), **kw)


def _arrays(layer):
    bias = layer.bias.asnumpy() if layer.has_bias else None
    return (layer.weight.asnumpy(), bias, layer.mindpet_delta_lora_a.asnumpy(),
            layer.mindpet_delta_lora_b.asnumpy())


class _SumLoss(nn.Cell):
    """sum(g * layer(x)): its gradients are the vector-Jacobian products with g."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def construct(self, x, g):
        return (self.layer(x) * g).sum()


@pytest.mark.parametrize("shape", [(6, 12), (2, 3, 12)], ids=["2d", "3d"])
@pytest.mark.parametrize("activation", [None, "tanh"])
def test_forward_and_grads_match_numpy(mode, shape, activation):
    layer = _layer(activation=activation)
    x, g = _rand(*shape, seed=5), _rand(*shape[:-1], 10, seed=6)
    w, b, a, bm = _arrays(layer)
    s = ref.lora_scaling(8, 4)

    y = layer(Tensor(x)).asnumpy()
    assert y.shape == shape[:-1] + (10,)
    np.testing.assert_allclose(y, ref.lora_forward(x, w, b, a, bm, s, activation), rtol=1e-5, atol=1e-5)

    net = _SumLoss(layer)
    params = [layer.mindpet_delta_lora_a, layer.mindpet_delta_lora_b]
    dx, (da, db) = ms.grad(net, grad_position=0, weights=params)(Tensor(x), Tensor(g))
    rdx, rda, rdb = ref.lora_grads(x, w, b, a, bm, s, g, activation)
    np.testing.assert_allclose(dx.asnumpy(), rdx, rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(da.asnumpy(), rda, rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(db.asnumpy(), rdb, rtol=1e-4, atol=2e-4)


def test_float16_compute_matches_numpy_and_keeps_input_dtype(mode):
    layer = _layer(compute=F16, activation="relu")
    x = _rand(4, 12, seed=7)
    w, b, a, bm = _arrays(layer)
    y = layer(Tensor(x))
    assert y.dtype == F32  # cast back to the input's dtype
    expect = ref.lora_forward(x, w, b, a, bm, ref.lora_scaling(8, 4), "relu")
    np.testing.assert_allclose(y.asnumpy(), expect, rtol=2e-2, atol=2e-2)
    y16 = layer(Tensor(x, F16))
    assert y16.dtype == F16


def test_fresh_layer_equals_its_dense_and_parameters_are_mindpets(mode):
    layer = LoRADense(12, 10, lora_rank=4, lora_alpha=8, compute_dtype=F32)
    assert layer.mindpet_delta_lora_a.shape == (4, 12)
    assert layer.mindpet_delta_lora_b.shape == (10, 4)
    assert not layer.mindpet_delta_lora_b.asnumpy().any()  # B starts at zero
    assert layer.mindpet_delta_lora_a.asnumpy().std() > 0
    assert isinstance(layer, nn.Dense)
    x = _rand(3, 12, seed=8)
    dense = x @ layer.weight.asnumpy().T + layer.bias.asnumpy()
    np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), dense, rtol=1e-5, atol=1e-5)

    class Net(nn.Cell):
        def __init__(self):
            super().__init__()
            self.proj = layer

    names = [n for n, _ in Net().parameters_and_names()]
    assert "proj.mindpet_delta_lora_a" in names and "proj.mindpet_delta_lora_b" in names


def test_default_a_init_is_heuniform_sqrt5():
    # HeUniform(negative_slope=sqrt(5)) on fan_in=in: bound = sqrt(6 / ((1 + 5) * fan_in)) = 1/sqrt(in)
    layer = LoRADense(400, 8, lora_rank=64, lora_alpha=16)
    a = layer.mindpet_delta_lora_a.asnumpy()
    bound = 1 / math.sqrt(400)
    assert np.abs(a).max() <= bound + 1e-7
    assert np.abs(a).max() > 0.9 * bound  # uniform over the whole range
    assert layer.scaling == 16 / 64


def test_param_init_type_and_tensor_init_used_as_given():
    a0 = _rand(2, 5, seed=9)
    layer = LoRADense(5, 3, 2, 4, lora_a_init=Tensor(a0), lora_b_init=Normal(0.5), param_init_type=F16)
    assert layer.mindpet_delta_lora_a.dtype == F16 and layer.mindpet_delta_lora_b.dtype == F16
    np.testing.assert_allclose(layer.mindpet_delta_lora_a.asnumpy(), a0.astype(np.float16))
    assert layer.mindpet_delta_lora_b.asnumpy().std() > 0.1


def test_rslora_scaling(mode):
    layer = _layer(use_rslora=True, activation=None)
    x = _rand(3, 12, seed=10)
    w, b, a, bm = _arrays(layer)
    assert layer.scaling == pytest.approx(8 / 2.0)
    expect = ref.lora_forward(x, w, b, a, bm, ref.lora_scaling(8, 4, rslora=True))
    np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), expect, rtol=1e-5, atol=1e-5)


def test_dropout_zero_adds_no_op_and_dropout_only_in_training():
    assert _layer().lora_dropout is None
    assert not any(isinstance(c, nn.Dropout) for _, c in _layer().cells_and_names())
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        layer = _layer(lora_dropout=0.5, has_bias=False)
        x = _rand(64, 12, seed=11)
        w, _, a, bm = _arrays(layer)
        expect = ref.lora_forward(x, w, None, a, bm, ref.lora_scaling(8, 4))
        layer.set_train(False)
        np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), expect, rtol=1e-5, atol=1e-5)
        layer.set_train(True)
        assert np.abs(layer(Tensor(x)).asnumpy() - expect).max() > 1e-2
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


def test_merge_unmerge(mode):
    layer = _layer(activation="tanh")
    x = _rand(5, 12, seed=12)
    w0 = layer.weight.asnumpy().copy()
    before = layer(Tensor(x)).asnumpy()
    layer.merge()
    _, b, a, bm = _arrays(layer)
    np.testing.assert_allclose(layer.weight.asnumpy(), w0 + ref.lora_scaling(8, 4) * bm @ a, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), before, rtol=0, atol=1e-5)
    layer.merge()  # idempotent
    np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), before, rtol=0, atol=1e-5)
    layer.unmerge()
    np.testing.assert_allclose(layer.weight.asnumpy(), w0, rtol=0, atol=1e-6)
    np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), before, rtol=0, atol=1e-5)


def test_merge_inside_a_compiled_parent_network_recompiles():
    ms.set_context(mode=ms.GRAPH_MODE)
    layer = _layer()
    net = nn.SequentialCell([layer, nn.ReLU()])
    x = Tensor(_rand(4, 12, seed=13))
    before = net(x).asnumpy()
    layer.merge()
    np.testing.assert_allclose(net(x).asnumpy(), before, atol=1e-5)
    layer.unmerge()
    np.testing.assert_allclose(net(x).asnumpy(), before, atol=1e-5)


def test_from_dense_shares_parameters_and_activation(mode):
    dense = nn.Dense(12, 10, activation="tanh", weight_init=Tensor(_rand(10, 12, seed=14)))
    x = _rand(3, 12, seed=15)
    base = dense(Tensor(x)).asnumpy()
    lora = LoRADense.from_dense(dense, lora_rank=2, lora_alpha=4)
    assert lora.weight is dense.weight and lora.bias is dense.bias
    assert lora.dtype == F32  # compute dtype inherited from the weight
    np.testing.assert_allclose(lora(Tensor(x)).asnumpy(), base, rtol=0, atol=1e-6)
    lora.mindpet_delta_lora_b.set_data(Tensor(_rand(10, 2, seed=16)))
    w, b, a, bm = _arrays(lora)
    np.testing.assert_allclose(lora(Tensor(x)).asnumpy(), ref.lora_forward(x, w, b, a, bm, 2.0, "tanh"),
                               rtol=1e-5, atol=2e-4)  # MindSpore's CPU tanh is accurate to ~1e-4
    with pytest.raises(TypeError, match="dense"):
        LoRADense.from_dense(nn.Conv2d(1, 1, 1), 2, 4)


def test_rank_below_two_input_is_refused():
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        with pytest.raises(ValueError, match="rank >= 2"):
            _layer()(Tensor(_rand(12)))
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


@pytest.mark.parametrize("kwargs, exc, key", [
    ({"lora_rank": 0}, ValueError, "lora_rank"),
    ({"lora_rank": -2}, ValueError, "lora_rank"),
    ({"lora_rank": 2.0}, TypeError, "lora_rank"),
    ({"lora_rank": True}, TypeError, "lora_rank"),
    ({"lora_alpha": "8"}, TypeError, "lora_alpha"),
    ({"lora_alpha": True}, TypeError, "lora_alpha"),
    ({"lora_alpha": 0}, ValueError, "lora_alpha"),
    ({"lora_alpha": 0.0}, ValueError, "lora_alpha"),
    ({"lora_dropout": 0}, TypeError, "lora_dropout"),
    ({"lora_dropout": 1.0}, ValueError, "lora_dropout"),
    ({"lora_dropout": -0.1}, ValueError, "lora_dropout"),
    ({"lora_a_init": Tensor(np.zeros((3, 6), np.float32))}, ValueError, "lora_a_init"),
    ({"lora_a_init": Tensor(np.zeros((2,), np.float32))}, ValueError, "lora_a_init"),
    ({"lora_b_init": Tensor(np.zeros((4, 3), np.float32))}, ValueError, "lora_b_init"),
    ({"lora_b_init": [1, 2]}, TypeError, "lora_b_init"),
    ({"lora_b_init": "bogus"}, ValueError, "lora_b_init"),
    ({"param_init_type": ms.int32}, TypeError, "param_init_type"),
    ({"param_init_type": "float64"}, TypeError, "param_init_type"),
    ({"compute_dtype": np.float32}, TypeError, "compute_dtype"),
    ({"activation": 3}, TypeError, "activation"),
    ({"activation": "no_such_act"}, ValueError, "activation"),
    ({"use_rslora": 1}, TypeError, "use_rslora"),
    ({"lora_alpha": float("nan")}, ValueError, "lora_alpha"),
    ({"lora_alpha": float("inf")}, ValueError, "lora_alpha"),
    ({"lora_alpha": np.float32("-inf")}, ValueError, "lora_alpha"),
    ({"lora_a_init": 1 + 2j}, TypeError, "lora_a_init"),
    ({"lora_b_init": np.complex64(1)}, TypeError, "lora_b_init"),
    ({"lora_b_init": float("nan")}, ValueError, "lora_b_init"),
    ({"lora_b_init": Tensor(np.ones((4, 2), np.complex64))}, TypeError, "lora_b_init"),
    ({"lora_b_init": Tensor(np.ones((4, 2), bool))}, TypeError, "lora_b_init"),
    ({"lora_a_init": Tensor(np.full((2, 6), np.nan, np.float32))}, ValueError, "lora_a_init"),
    ({"lora_b_init": Tensor(np.full((4, 2), np.inf, np.float16))}, ValueError, "lora_b_init"),
    ({"activation": ops.Add()}, TypeError, "activation"),
    ({"activation": ops.Dropout()}, TypeError, "activation"),
    ({"activation": ops.ReduceSum()}, TypeError, "activation"),
    ({"activation": "threshold"}, ValueError, "activation"),
    ({"activation": "softmax2d"}, ValueError, "activation"),
])
def test_argument_checks(kwargs, exc, key):
    args = {"in_channels": 6, "out_channels": 4, "lora_rank": 2, "lora_alpha": 4}
    args.update(kwargs)
    with pytest.raises(exc, match=key) as info:
        LoRADense(**args)
    value = next(iter(kwargs.values()))
    if not isinstance(value, Tensor):
        assert repr(value)[:10] in str(info.value) or str(value) in str(info.value)


def test_defaults_accept_mindpet_call_forms():
    layer = LoRADense(in_channels=6, out_channels=4, lora_rank=2, lora_alpha=4.5, lora_dropout=0.1,
                      lora_a_init=HeUniform(negative_slope=math.sqrt(5)), lora_b_init="zeros",
                      has_bias=False).to_float(F16)
    assert layer.dtype == F16 and not layer.has_bias and layer.scaling == 4.5 / 2


def test_shard():
    layer = _layer(activation="relu")
    assert layer.shard() is layer  # no strategies, no parallel context: harmless
    layer.shard(strategy_org_dense_matmul=((2, 1), (4, 1)), strategy_lora_a_matmul=((2, 1), (1, 1)),
                strategy_activation=((2, 4),))
    with pytest.raises(TypeError, match="strategy_lora_mul"):
        layer.shard(strategy_lora_mul=3)
    soft = _layer(activation=nn.LogSoftmax())
    with pytest.raises(ValueError, match="LogSoftmax"):
        soft.shard(strategy_activation=((2, 1),))
    prim = _layer(activation=ops.ReLU())
    prim.shard(strategy_activation=((2, 1),))


# ---- issue 12: trust at the edges ---------------------------------------------------------------
_LAZY_INIT_SNIPPET = """
import numpy as np
from mindspore import Tensor, nn, dtype as mstype
from mindspore.common.initializer import Normal, One
from mindpet_lite.delta import LoRADense
from mindpet_lite.pet import get_pet_model

a = Tensor(shape=(2, 1), dtype=mstype.int8, init=One())
b = Tensor(shape=(2, 2), dtype=mstype.float32, init=Normal(0.5))
layer = LoRADense(1, 2, 2, 4, lora_a_init=a, lora_b_init=b)
assert not a.has_init and not b.has_init  # materialised once, in place
assert layer.mindpet_delta_lora_a.dtype == mstype.float32
assert (layer.mindpet_delta_lora_a.asnumpy() == 1).all()
assert np.array_equal(layer.mindpet_delta_lora_b.asnumpy(), b.asnumpy()) and b.asnumpy().std() > 0

class Net(nn.Cell):
    def __init__(self):
        super().__init__()
        self.proj = nn.Dense(3, 4)

net = get_pet_model(Net(), {"pet_type": "lora", "lora_rank": 2, "lora_alpha": 4, "target_modules": ".*proj",
                            "lora_a_init": Tensor(shape=(2, 3), dtype=mstype.int8, init=One())})
assert (net.proj.mindpet_delta_lora_a.asnumpy() == 1).all()
print("OK")
"""


def test_lazily_initialised_tensor_init_is_used_not_a_crash():
    # MindPet's tests pass Tensor(shape=..., dtype=int8, init=One()): it used to end the process (SIGSEGV)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])))
    run = subprocess.run([sys.executable, "-c", _LAZY_INIT_SNIPPET], capture_output=True, text=True, env=env,
                         timeout=600, check=False)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip().endswith("OK")


def test_numpy_scalars_and_fraction_are_converted(mode):
    layer = LoRADense(np.int64(6), np.int32(4), np.int64(2), np.float32(3.0), compute_dtype=F32)
    assert type(layer.lora_rank) is int and type(layer.lora_alpha) is float  # pylint: disable=unidiomatic-typecheck
    assert layer.mindpet_delta_lora_a.shape == (2, 6) and layer.scaling == 1.5
    assert layer(Tensor(_rand(3, 6))).shape == (3, 4)
    half = LoRADense(6, 4, 2, fractions.Fraction(1, 2), compute_dtype=F32)
    assert half.lora_alpha == 0.5 and type(half.lora_alpha) is float  # pylint: disable=unidiomatic-typecheck
    assert half(Tensor(_rand(3, 6))).shape == (3, 4)


def test_element_wise_primitive_activation_is_accepted(mode):
    layer = _layer(activation=ops.ReLU())
    x = _rand(3, 12, seed=30)
    np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), ref.lora_forward(x, *_arrays(layer), 2.0, "relu"),
                               rtol=1e-5, atol=1e-5)


def test_rank_above_layer_width_is_accepted_with_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="mindpet_lite.delta.lora"):
        layer = LoRADense(6, 3, lora_rank=5, lora_alpha=4)
    assert layer.mindpet_delta_lora_b.shape == (3, 5)  # accepted, as MindPet and HF PEFT do
    assert "lora_rank=5" in caplog.text and "min(in_channels, out_channels)=3" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mindpet_lite.delta.lora"):
        LoRADense(6, 3, lora_rank=3, lora_alpha=4)
    assert not caplog.text


def test_from_dense_refuses_a_lora_dense():
    adapted = _layer()
    a, b = adapted.mindpet_delta_lora_a.asnumpy().copy(), adapted.mindpet_delta_lora_b.asnumpy().copy()
    with pytest.raises(TypeError, match="already holds its own LoRA factors"):
        LoRADense.from_dense(adapted, lora_rank=2, lora_alpha=4)
    np.testing.assert_array_equal(adapted.mindpet_delta_lora_a.asnumpy(), a)
    np.testing.assert_array_equal(adapted.mindpet_delta_lora_b.asnumpy(), b)


@pytest.mark.parametrize("target, value, named", [
    ("mindpet_delta_lora_a", np.nan, "lora_a"),
    ("mindpet_delta_lora_b", np.inf, "lora_b"),
    ("weight", -np.inf, "weight"),
])
def test_merge_never_folds_non_finite_values_into_w(target, value, named):
    layer = _layer()
    param = getattr(layer, target)
    bad = param.asnumpy().copy()
    bad[0, 1] = value
    param.set_data(Tensor(bad))
    w0 = layer.weight.asnumpy().copy()
    with pytest.raises(ValueError, match=rf"LoRADense\(12 -> 10, weight \[10, 12\]\): cannot merge: {named}.* 1 "):
        layer.merge()
    np.testing.assert_array_equal(layer.weight.asnumpy(), w0)
    assert not layer.merged


def test_merge_refuses_an_overflow_of_the_weight_dtype():
    # s·B·A = 20·2 = 40 per entry: 65500 + 40 is past float16's largest finite value
    layer = LoRADense(4, 3, 2, 40, weight_init=Tensor(np.full((3, 4), 65500, np.float16)), has_bias=False,
                      lora_a_init="ones", lora_b_init="ones", dtype=F16, param_init_type=F16, compute_dtype=F16)
    w0 = layer.weight.asnumpy().copy()
    with pytest.raises(ValueError, match="cannot merge: W \\+ s·B·A overflows Float16"):
        layer.merge()
    np.testing.assert_array_equal(layer.weight.asnumpy(), w0)
    assert not layer.merged


def test_unmerge_refuses_factors_that_became_non_finite():
    layer = _layer().merge()
    merged_w = layer.weight.asnumpy().copy()
    layer.mindpet_delta_lora_b.set_data(Tensor(np.full((10, 4), np.nan, np.float32)))
    with pytest.raises(ValueError, match="cannot unmerge: lora_b \\(B\\) holds 40 non-finite"):
        layer.unmerge()
    np.testing.assert_array_equal(layer.weight.asnumpy(), merged_w)
    assert layer.merged


def _in_strategy(prim):
    return prim.attrs.get("in_strategy")


# the activations MindPet's LoRADense.shard shards, and the strategy each of their primitives takes
_S = (2, 1)
_UNARY = ["relu", "relu6", "tanh", "sigmoid", "fast_gelu", "elu", "softsign", "hswish", "hsigmoid", "softshrink",
          "hshrink", "mish", "softmax"]  # each cell's one primitive has the activation's name
_COMPOSITE = {
    "leakyrelu": lambda act: {act.select_op: (_S, _S), act.mul: (_S, ())},
    "logsigmoid": lambda act: {act.mul: (_S, ()), act.exp: (_S,), act.add: (_S, ()), act.rec: (_S,), act.log: (_S,)},
    "gelu": lambda act: {act: (_S,)},
    "prelu": lambda act: {act.prelu: (_S, (1,))},
}


@pytest.mark.parametrize("name", _UNARY + sorted(_COMPOSITE))
def test_shard_every_activation_mindpet_shards(name):
    layer = LoRADense(4, 4, 2, 4, activation=name)
    layer.shard(strategy_activation=((2, 1), (1,)) if name == "prelu" else ((2, 1),))
    act = layer.activation
    expected = _COMPOSITE[name](act) if name in _COMPOSITE else {getattr(act, name): (_S,)}
    for prim, strategy in expected.items():
        assert _in_strategy(prim) == strategy, prim


_TWICE = ((1, 1), (1, 1))  # the input's strategy twice, as MindPet's own tests write it
# the primitives MindPet passes strategy_activation to as given, and the ones it derives a strategy for
_AS_GIVEN = {
    "leakyrelu": lambda act: {act.select_op: _TWICE, act.mul: ((1, 1), ())},
    "logsigmoid": lambda act: {act.exp: _TWICE, act.rec: _TWICE, act.log: _TWICE, act.mul: ((1, 1), ()),
                               act.add: ((1, 1), ())},
    "gelu": lambda act: {act: _TWICE},
}


@pytest.mark.parametrize("name", _UNARY + sorted(_AS_GIVEN))
def test_shard_keeps_mindpets_repeated_activation_strategy_as_given(name):
    layer = LoRADense(1, 1, 2, 2, activation=name)
    layer.shard(strategy_activation=_TWICE)
    act = layer.activation
    expected = _AS_GIVEN[name](act) if name in _AS_GIVEN else {getattr(act, name): _TWICE}
    for prim, strategy in expected.items():
        assert prim.in_strategy == strategy, prim  # MindPet's tests read in_strategy


@pytest.mark.parametrize("strategy", [((1, 1), (2, 1)), ((1, 1), (1,)), ((1, 1), (1, 1), (1, 1))])
def test_shard_refuses_activation_strategies_that_are_not_the_input_once_or_twice(strategy):
    layer = LoRADense(1, 1, 2, 2, activation="logsigmoid")
    with pytest.raises(ValueError, match="strategy_activation"):
        layer.shard(strategy_activation=strategy)
    assert _in_strategy(layer.activation.log) is None


@pytest.mark.parametrize("activation", ["leakyrelu", nn.LeakyReLU(1.5), "gelu"], ids=["leakyrelu", "alpha>1", "gelu"])
def test_sharding_a_functional_activation_keeps_the_function(mode, activation):
    layer = _layer(activation=activation)
    x = Tensor(_rand(6, 12, seed=31))
    before = layer(x).asnumpy()
    layer.shard(strategy_activation=((2, 1),))
    np.testing.assert_allclose(layer(x).asnumpy(), before, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("name", ["logsoftmax", "softmin", "silu", "tanhshrink", "hardtanh", "rrelu"])
def test_shard_activations_without_a_shardable_primitive_are_refused(name):
    layer = LoRADense(4, 4, 2, 4, activation=name)
    with pytest.raises(ValueError, match=f"strategy_activation: activation {type(layer.activation).__name__}"):
        layer.shard(strategy_org_dense_matmul=((2, 1), (1, 1)), strategy_activation=((2, 1),))
    assert _in_strategy(layer.matmul) is None  # nothing applied


@pytest.mark.parametrize("kwargs, exc", [
    ({"strategy_org_dense_matmul": ((2, 1), (0, 1))}, ValueError),
    ({"strategy_org_dense_matmul": ((2, 1), (-2, 1))}, ValueError),
    ({"strategy_org_dense_matmul": ((2, 1, 1), (1, 1))}, ValueError),
    ({"strategy_org_dense_matmul": ((2, 1),)}, ValueError),
    ({"strategy_org_dense_matmul": ()}, ValueError),
    ({"strategy_org_bias_add": ((2, 1), (1, 1))}, ValueError),
    ({"strategy_lora_mul": ((2, 1),)}, ValueError),
    ({"strategy_lora_add": ((2.0, 1), (2, 1))}, TypeError),
    ({"strategy_lora_add": ((True, 1), (2, 1))}, TypeError),
    ({"strategy_lora_a_matmul": [(2, 1), (1, 1)]}, TypeError),
    ({"strategy_lora_b_matmul": 1}, TypeError),
    ({"strategy_activation": ((2, 1, 1),)}, ValueError),
    ({"strategy_activation": (2, 1)}, TypeError),
])
def test_shard_checks_every_strategy_before_applying_any(kwargs, exc):
    layer = _layer(activation="relu")
    name = next(iter(kwargs))
    good = {"strategy_org_dense_matmul": ((2, 1), (1, 1)), "strategy_lora_mul": ((2, 1), ())}
    good.pop(name, None)
    with pytest.raises(exc, match=name):
        layer.shard(**good, **kwargs)
    for prim in (layer.matmul, layer.bias_add, layer.lora_a_matmul, layer.lora_b_matmul, layer.mul, layer.add,
                 layer.activation.relu):
        assert _in_strategy(prim) is None  # the layer is not half-sharded


@pytest.mark.parametrize("kwargs, layer_kwargs, why", [
    ({"strategy_lora_dropout": ((2, 1),)}, {}, "lora_dropout=0"),
    ({"strategy_org_bias_add": ((2, 1), (1,))}, {"has_bias": False}, "has_bias=False"),
    ({"strategy_activation": ((2, 1),)}, {}, "no activation"),
])
def test_shard_refuses_a_strategy_for_an_op_the_layer_lacks(kwargs, layer_kwargs, why):
    layer = _layer(**layer_kwargs)
    with pytest.raises(ValueError, match=f"{next(iter(kwargs))} was given.*{why}"):
        layer.shard(strategy_lora_add=((2, 1), (2, 1)), **kwargs)
    assert _in_strategy(layer.add) is None


def test_shard_applies_every_checked_strategy_and_computes_in_the_branch_form():
    layer = _layer(lora_dropout=0.1, activation="relu")
    strategies = dict(strategy_org_dense_matmul=((2, 1), (1, 1)), strategy_org_bias_add=((2, 1), (1,)),
                      strategy_lora_dropout=((2, 1),), strategy_lora_a_matmul=((2, 1), (1, 1)),
                      strategy_lora_b_matmul=((2, 1), (1, 1)), strategy_lora_mul=((2, 1), ()),
                      strategy_lora_add=((2, 1), (2, 1)), strategy_activation=((2, 1),))
    assert layer.shard(**strategies) is layer
    prims = (layer.matmul, layer.bias_add, layer.lora_dropout.dropout, layer.lora_a_matmul, layer.lora_b_matmul,
             layer.mul, layer.add, layer.activation.relu)
    assert tuple(_in_strategy(p) for p in prims) == tuple(strategies.values())
    numpy_ints = _layer()
    numpy_ints.shard(strategy_org_dense_matmul=((np.int64(2), 1), (1, np.int32(1))))
    assert _in_strategy(numpy_ints.matmul) == ((2, 1), (1, 1))
    assert not any(isinstance(d, np.integer) for dims in _in_strategy(numpy_ints.matmul) for d in dims)
    assert numpy_ints._fold_mode is False  # pylint: disable=protected-access  # the folded matmuls carry none
