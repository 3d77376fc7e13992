"""AdapterDense / AdapterLayer against numpy: forward and gradients in both modes, MindPet's names,
argument checks, from_dense, shard."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from mindpet_lite.delta import AdapterDense, AdapterLayer
from tests import reference as ref
from tests.delta.test_lora import _SumLoss, _rand

F32 = ms.float32
_BLOCK = "mindpet_delta_adapter.mindpet_delta_adapter_block."



def _layer(n_in=6, n_out=5, bottleneck=3, non_linearity="gelu"):
    cell = AdapterDense(n_in, n_out, weight_init=Tensor(_rand(n_out, n_in, seed=1, scale=0.4)),
                        bias_init=Tensor(_rand(n_out, seed=2)), bottleneck_size=bottleneck,
                        non_linearity=non_linearity, compute_dtype=F32)
    block = cell.mindpet_delta_adapter.mindpet_delta_adapter_block
    for proj, seed in ((block.mindpet_delta_adapter_down_sampler, 3), (block.mindpet_delta_adapter_up_sampler, 5)):
        proj.weight.set_data(Tensor(_rand(*proj.weight.shape, seed=seed, scale=0.5)))
        proj.bias.set_data(Tensor(_rand(*proj.bias.shape, seed=seed + 1, scale=0.5)))
    return cell


def _arrays(cell):
    block = cell.mindpet_delta_adapter.mindpet_delta_adapter_block
    down, up = block.mindpet_delta_adapter_down_sampler, block.mindpet_delta_adapter_up_sampler
    return [p.asnumpy() for p in (cell.weight, cell.bias, down.weight, down.bias, up.weight, up.bias)]


@pytest.mark.parametrize("non_linearity", ["gelu", "relu"])
def test_forward_and_grads_match_numpy(mode, non_linearity):
    cell = _layer(non_linearity=non_linearity)
    x, g = _rand(2, 3, 6, seed=7), _rand(2, 3, 5, seed=8)
    arrays = _arrays(cell)
    y = cell(Tensor(x)).asnumpy()
    np.testing.assert_allclose(y, ref.adapter_dense_forward(x, *arrays, act=non_linearity), rtol=1e-5, atol=1e-5)

    block = cell.mindpet_delta_adapter.mindpet_delta_adapter_block
    down, up = block.mindpet_delta_adapter_down_sampler, block.mindpet_delta_adapter_up_sampler
    params = [cell.weight, cell.bias, down.weight, down.bias, up.weight, up.bias]
    dx, grads = ms.grad(_SumLoss(cell), grad_position=0, weights=params)(Tensor(x), Tensor(g))
    expect = ref.adapter_dense_grads(x, *arrays, g, act=non_linearity)
    np.testing.assert_allclose(dx.asnumpy(), expect["x"], rtol=1e-4, atol=1e-4)
    for got, key in zip(grads, ("w", "b", "wd", "bd", "wu", "bu")):
        np.testing.assert_allclose(got.asnumpy(), expect[key], rtol=1e-4, atol=1e-4, err_msg=key)


def test_layer_alone_is_the_residual_block(mode):
    layer = AdapterLayer(5, 2, non_linearity="tanh", compute_dtype=F32)
    block = layer.mindpet_delta_adapter_block
    down, up = block.mindpet_delta_adapter_down_sampler, block.mindpet_delta_adapter_up_sampler
    h = _rand(4, 5, seed=9)
    expect = h + np.tanh(h @ down.weight.asnumpy().T + down.bias.asnumpy()) @ up.weight.asnumpy().T + up.bias.asnumpy()
    np.testing.assert_allclose(layer(Tensor(h)).asnumpy(), expect, rtol=1e-5, atol=1e-5)


def test_mindpet_names_shapes_and_init():
    cell = AdapterDense(6, 5, bottleneck_size=3, compute_dtype=F32)
    shapes = {p.name: p.shape for p in cell.get_parameters()}
    assert shapes == {"weight": (5, 6), "bias": (5,),
                      _BLOCK + "mindpet_delta_adapter_down_sampler.weight": (3, 5),
                      _BLOCK + "mindpet_delta_adapter_down_sampler.bias": (3,),
                      _BLOCK + "mindpet_delta_adapter_up_sampler.weight": (5, 3),
                      _BLOCK + "mindpet_delta_adapter_up_sampler.bias": (5,)}
    up = cell.mindpet_delta_adapter.mindpet_delta_adapter_block.mindpet_delta_adapter_up_sampler
    assert 0 < np.abs(up.weight.asnumpy()).max() < 0.1  # MindPet's 'normal' (sigma 0.01): near, not at, identity
    zero = AdapterDense(6, 5, bottleneck_size=3, compute_dtype=F32, up_sampler_init="zeros")
    x = _rand(2, 6, seed=3)
    dense = x @ zero.weight.asnumpy().T + zero.bias.asnumpy()
    np.testing.assert_allclose(zero(Tensor(x)).asnumpy(), dense, rtol=1e-6, atol=1e-6)


def test_from_dense_shares_the_parameters():
    dense = nn.Dense(6, 5, activation="relu")
    cell = AdapterDense.from_dense(dense, bottleneck_size=2, compute_dtype=F32, up_sampler_init="zeros")
    assert cell.weight is dense.weight and cell.bias is dense.bias
    x = _rand(3, 6, seed=4)
    np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), dense(Tensor(x)).asnumpy(), rtol=1e-6, atol=1e-6)
    with pytest.raises(TypeError, match="dense"):
        AdapterDense.from_dense(cell)


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(in_channels=5.1), TypeError, "in_channels"),
    (dict(out_channels=0), ValueError, "out_channels"),
    (dict(bottleneck_size=-1), ValueError, "bottleneck_size"),
    (dict(bottleneck_size=True), TypeError, "bottleneck_size"),
    (dict(non_linearity="relu7"), ValueError, "non_linearity"),
    (dict(param_init_type=ms.int32), TypeError, "param_init_type"),
    (dict(compute_dtype="float64"), TypeError, "compute_dtype"),
    (dict(has_bias=1), TypeError, "has_bias"),
    (dict(activation=1), TypeError, "activation"),
    (dict(up_sampler_init=Tensor(np.zeros((2, 2), np.float32))), ValueError, "up_sampler_init"),
])
def test_bad_arguments_name_the_argument(kwargs, error, name):
    args = dict(in_channels=5, out_channels=4, bottleneck_size=2)
    args.update(kwargs)
    with pytest.raises(error, match=name):
        AdapterDense(**args)


def test_shard_sets_strategies_and_checks_them_first():
    cell = AdapterDense(6, 4, bottleneck_size=2, activation="relu", compute_dtype=F32)
    block = cell.mindpet_delta_adapter.mindpet_delta_adapter_block
    cell.shard(strategy_matmul_org=((2, 1), (1, 1)), strategy_activation_org=((2, 1),),
               strategy_matmul_down_sampler=((2, 1), (1, 1)), strategy_non_linearity=((2, 1),),
               strategy_residual_add=((2, 1), (2, 1)))
    assert cell.matmul.attrs.get("in_strategy") == ((2, 1), (1, 1))
    assert block.mindpet_delta_adapter_down_sampler.matmul.attrs.get("in_strategy") == ((2, 1), (1, 1))
    assert cell.mindpet_delta_adapter.residual_add.attrs.get("in_strategy") == ((2, 1), (2, 1))
    fresh = AdapterDense(6, 4, bottleneck_size=2, compute_dtype=F32)
    with pytest.raises(TypeError, match="strategy_bias_up_sampler"):
        fresh.shard(strategy_matmul_org=((2, 1), (1, 1)), strategy_bias_up_sampler=3)
    assert fresh.matmul.attrs.get("in_strategy") is None  # nothing set by the refused call
    with pytest.raises(ValueError, match="strategy_activation_org"):
        fresh.shard(strategy_activation_org=((2, 1),))
