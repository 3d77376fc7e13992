"""LoRADense against the numpy formula, its argument checks, merge, from_dense and shard."""
import math

import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn, ops
from mindspore.common.initializer import HeUniform, Normal

from mindpet_lite.delta import LoRADense
from tests import reference as ref

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
