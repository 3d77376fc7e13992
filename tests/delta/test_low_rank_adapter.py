"""LowRankAdapterDense / LowRankAdapterLayer against numpy (forward, gradients of every factor, both
modes), MindPet's names, argument checks, zero start, shard."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from mindpet_lite.delta import LowRankAdapterDense, LowRankAdapterLayer
from tests import reference as ref
from tests.delta.test_lora import _SumLoss, _rand

F32 = ms.float32
_MARK = "mindpet_delta_low_rank_adapter"



def _layer(non_linearity="gelu"):
    cell = LowRankAdapterDense(6, 4, weight_init=Tensor(_rand(4, 6, seed=1, scale=0.4)),
                               bias_init=Tensor(_rand(4, seed=2)), reduction_factor=2, low_rank_size=2,
                               non_linearity=non_linearity, compute_dtype=F32)
    for seed, p in enumerate(cell.mindpet_delta_low_rank_adapter.get_parameters(), start=10):
        p.set_data(Tensor(_rand(*p.shape, seed=seed, scale=0.5)))
    return cell


def _factors(cell):
    adapter = cell.mindpet_delta_low_rank_adapter
    down = adapter.mindpet_delta_low_rank_adapter_down_sampler
    up = adapter.mindpet_delta_low_rank_adapter_up_sampler
    return down, up


@pytest.mark.parametrize("non_linearity", ["gelu", "tanh"])
def test_forward_and_grads_match_numpy(mode, non_linearity):
    cell = _layer(non_linearity)
    down, up = _factors(cell)
    arr = {p.name.rsplit(".", 1)[-1] + side: p.asnumpy()
           for side, lin in (("_d", down), ("_u", up)) for p in lin.get_parameters()}
    l_d, r_d = arr[_MARK + "_weight_left_d"], arr[_MARK + "_weight_right_d"]
    l_u, r_u = arr[_MARK + "_weight_left_u"], arr[_MARK + "_weight_right_u"]
    wd, wu = (l_d @ r_d).T, (l_u @ r_u).T  # the [out, in] weights the factors make
    w, b = cell.weight.asnumpy(), cell.bias.asnumpy()
    x, g = _rand(2, 3, 6, seed=7), _rand(2, 3, 4, seed=8)
    expect = ref.adapter_dense_forward(x, w, b, wd, arr["bias_d"], wu, arr["bias_u"], act=non_linearity)
    np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), expect, rtol=1e-5, atol=1e-5)

    params = [down.mindpet_delta_low_rank_adapter_weight_left, down.mindpet_delta_low_rank_adapter_weight_right,
              down.bias, up.mindpet_delta_low_rank_adapter_weight_left,
              up.mindpet_delta_low_rank_adapter_weight_right, up.bias]
    dx, grads = ms.grad(_SumLoss(cell), grad_position=0, weights=params)(Tensor(x), Tensor(g))
    d = ref.adapter_dense_grads(x, w, b, wd, arr["bias_d"], wu, arr["bias_u"], g, act=non_linearity)
    dl_d, dr_d = ref.low_rank_factor_grads(d["wd"], l_d, r_d)
    dl_u, dr_u = ref.low_rank_factor_grads(d["wu"], l_u, r_u)
    np.testing.assert_allclose(dx.asnumpy(), d["x"], rtol=1e-4, atol=1e-4)
    for got, want, key in zip(grads, (dl_d, dr_d, d["bd"], dl_u, dr_u, d["bu"]), ("Ld", "Rd", "bd", "Lu", "Ru", "bu")):
        np.testing.assert_allclose(got.asnumpy(), want, rtol=1e-4, atol=1e-4, err_msg=key)


def test_mindpet_names_and_shapes():
    cell = LowRankAdapterDense(6, 4, reduction_factor=2, low_rank_size=3, compute_dtype=F32)
    shapes = {p.name: p.shape for p in cell.get_parameters()}
    prefix = f"{_MARK}.{_MARK}_"
    assert shapes == {"weight": (4, 6), "bias": (4,),
                      f"{prefix}down_sampler.{_MARK}_weight_left": (4, 3),
                      f"{prefix}down_sampler.{_MARK}_weight_right": (3, 2),
                      f"{prefix}down_sampler.bias": (2,),
                      f"{prefix}up_sampler.{_MARK}_weight_left": (2, 3),
                      f"{prefix}up_sampler.{_MARK}_weight_right": (3, 4),
                      f"{prefix}up_sampler.bias": (4,)}


def test_zero_up_init_is_the_identity_and_from_dense_shares(mode):
    layer = LowRankAdapterLayer(4, 2, up_sampler_init="zeros", compute_dtype=F32)
    h = _rand(3, 4, seed=1)
    np.testing.assert_allclose(layer(Tensor(h)).asnumpy(), h, rtol=1e-6, atol=1e-6)
    dense = nn.Dense(6, 4)
    cell = LowRankAdapterDense.from_dense(dense, reduction_factor=2, up_sampler_init="zeros", compute_dtype=F32)
    assert cell.weight is dense.weight and cell.bias is dense.bias
    x = _rand(3, 6, seed=2)
    np.testing.assert_allclose(cell(Tensor(x)).asnumpy(), dense(Tensor(x)).asnumpy(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kwargs, error, name", [
    (dict(in_channels=5.1), TypeError, "in_channels"),
    (dict(out_channels=-4), ValueError, "out_channels"),
    (dict(reduction_factor=3.2), TypeError, "reduction_factor"),
    (dict(reduction_factor=0), ValueError, "reduction_factor"),
    (dict(reduction_factor=5), ValueError, "reduction_factor"),
    (dict(low_rank_size=0), ValueError, "low_rank_size"),
    (dict(low_rank_w_init=3), TypeError, "low_rank_w_init"),
    (dict(non_linearity="gleu"), ValueError, "non_linearity"),
    (dict(has_bias="1"), TypeError, "has_bias"),
    (dict(compute_dtype=ms.int8), TypeError, "compute_dtype"),
])
def test_bad_arguments_name_the_argument(kwargs, error, name):
    args = dict(in_channels=5, out_channels=4, reduction_factor=2)
    args.update(kwargs)
    with pytest.raises(error, match=name):
        LowRankAdapterDense(**args)


def test_shard_sets_strategies_and_checks_them_first():
    cell = LowRankAdapterDense(6, 4, reduction_factor=2, compute_dtype=F32)
    down, _ = _factors(cell)
    cell.shard(strategy_matmul_org=((2, 1), (1, 1)), strategy_matmul_down_sampler_input=((2, 1), (1, 1)),
               strategy_non_linearity=((2, 1),))
    assert down.matmul_input.attrs.get("in_strategy") == ((2, 1), (1, 1))
    fresh = LowRankAdapterDense(6, 4, reduction_factor=2, compute_dtype=F32)
    with pytest.raises(ValueError, match="strategy_residual_add"):
        fresh.shard(strategy_matmul_org=((2, 1), (1, 1)), strategy_residual_add=((2, 1),))
    assert fresh.matmul.attrs.get("in_strategy") is None
