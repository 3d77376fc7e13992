"""DoRA in LoRADense (use_dora) and the PiSSA / OLoRA starts (init_from_weight), against numpy."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from mindpet_lite.delta import LoRADense
from mindpet_lite.delta.lora_init import parse_weight_init, plain_lora_factors
from mindpet_lite.integrations.mindformers import LoRALinear
from tests import reference as ref

F32, F16 = ms.float32, ms.float16
S = ref.lora_scaling(8, 4)


def _rand(*shape, seed=0, scale=1.0):
    return (np.random.default_rng(seed).standard_normal(shape) * scale).astype(np.float32)


def _dora(n_in=12, n_out=10, rank=4, activation=None, compute=F32, has_bias=True, **kw):
    layer = LoRADense(n_in, n_out, rank, 8, has_bias=has_bias, activation=activation, compute_dtype=compute,
                      use_dora=True, weight_init=Tensor(_rand(n_out, n_in, seed=1, scale=0.3)),
                      bias_init=Tensor(_rand(n_out, seed=2)) if has_bias else "zeros",
                      lora_a_init=Tensor(_rand(rank, n_in, seed=3, scale=0.3)),
                      lora_b_init=Tensor(_rand(n_out, rank, seed=4, scale=0.3)), **kw)
    # a trained-looking magnitude: not the row norms, so m/n != 1
    layer.mindpet_delta_lora_magnitude.set_data(Tensor(np.random.default_rng(9).uniform(0.5, 2.0, n_out)
                                                       .astype(np.float32)))
    return layer


def _arrays(layer):
    bias = layer.bias.asnumpy() if layer.has_bias else None
    return (layer.weight.asnumpy(), bias, layer.mindpet_delta_lora_a.asnumpy(),
            layer.mindpet_delta_lora_b.asnumpy(), layer.mindpet_delta_lora_magnitude.asnumpy())


@pytest.mark.parametrize("fold", [False, True], ids=["branch", "folded"])
@pytest.mark.parametrize("shape", [(6, 12), (2, 3, 12)], ids=["2d", "3d"])
@pytest.mark.parametrize("activation", [None, "tanh"])
def test_dora_forward_and_grads_match_numpy(mode, fold, shape, activation):
    layer = _dora(activation=activation)
    layer._fold_mode = fold  # pylint: disable=protected-access
    x, g = _rand(*shape, seed=5), _rand(*shape[:-1], 10, seed=6)
    w, b, a, bm, m = _arrays(layer)

    y = layer(Tensor(x)).asnumpy()
    np.testing.assert_allclose(y, ref.dora_forward(x, w, b, a, bm, m, S, activation), rtol=1e-5, atol=1e-5)

    params = [layer.mindpet_delta_lora_a, layer.mindpet_delta_lora_b, layer.mindpet_delta_lora_magnitude]
    def loss(x, g):  # its gradients are the vector-Jacobian products with g
        return (layer(x) * g).sum()

    dx, (da, db, dm) = ms.grad(loss, grad_position=0, weights=params)(Tensor(x), Tensor(g))
    rdx, rda, rdb, rdm = ref.dora_grads(x, w, b, a, bm, m, S, g, activation)
    for got, want in ((dx, rdx), (da, rda), (db, rdb), (dm, rdm)):
        np.testing.assert_allclose(got.asnumpy(), want, rtol=1e-4, atol=2e-4)


def test_dora_float16_compute_matches_numpy():
    layer = _dora(compute=F16)
    x = _rand(5, 12, seed=7)
    w, b, a, bm, m = _arrays(layer)
    y = layer(Tensor(x))
    assert y.dtype == F32
    np.testing.assert_allclose(y.asnumpy(), ref.dora_forward(x, w, b, a, bm, m, S), rtol=2e-2, atol=2e-2)


class _FixedMask(nn.Cell):
    """A stand-in dropout with a known mask, so the training form can be checked against numpy."""

    def __init__(self, mask):
        super().__init__()
        self.mask = Tensor(mask)

    def construct(self, x):
        return x * self.mask


def test_dora_with_dropout_in_training_is_peft_form():
    """Training with dropout: x·Wᵀ + (m/n - 1)·(x̃·Wᵀ) + m/n·s·x̃·Aᵀ·Bᵀ (PEFT's DoRA), x̃ = dropout(x);
    in eval the dropout is the identity and the plain DoRA form is computed."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    try:
        layer = _dora(lora_dropout=0.5, has_bias=False)
        x = _rand(6, 12, seed=8)
        mask = (np.random.default_rng(3).random((6, 12)) > 0.5).astype(np.float32) * 2.0
        layer.lora_dropout = _FixedMask(mask)
        w, _, a, bm, m = (t.astype(np.float64) if t is not None else None for t in _arrays(layer))
        v = w + S * bm @ a
        c = m / np.linalg.norm(v, axis=1)
        xd = x * mask
        expect = x @ w.T + (c - 1) * (xd @ w.T) + c * (S * (xd @ a.T) @ bm.T)
        layer.set_train(True)
        np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), expect, rtol=1e-5, atol=1e-5)
        layer.set_train(False)
        np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), ref.dora_forward(x, w, None, a, bm, m, S),
                                   rtol=1e-5, atol=1e-5)
    finally:
        ms.set_context(mode=ms.GRAPH_MODE)


def test_fresh_dora_layer_starts_at_row_norms_and_equals_dense(mode):
    w = _rand(10, 12, seed=1)
    dense = nn.Dense(12, 10, weight_init=Tensor(w), bias_init=Tensor(_rand(10, seed=2)))
    layer = LoRADense.from_dense(dense, 4, 8, use_dora=True)
    np.testing.assert_allclose(layer.mindpet_delta_lora_magnitude.asnumpy(), np.linalg.norm(w, axis=1), rtol=1e-6)
    x = _rand(7, 12, seed=3)
    np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), dense(Tensor(x)).asnumpy(), rtol=1e-5, atol=1e-5)
    assert set(layer.adapter_parameters()) == {"mindpet_delta_lora_a", "mindpet_delta_lora_b",
                                               "mindpet_delta_lora_magnitude"}
    assert "use_dora=True" in repr(layer)


def test_dora_merge_equals_unmerged_and_unmerge_restores_w(mode):
    layer = _dora()
    w, b, a, bm, m = _arrays(layer)
    x = _rand(40, 12, seed=11)
    before = layer(Tensor(x)).asnumpy()
    layer.merge()
    np.testing.assert_allclose(layer.weight.asnumpy(), ref.dora_merged_weight(w, a, bm, m, S), rtol=1e-5, atol=1e-6)
    assert np.abs(layer(Tensor(x)).asnumpy() - before).max() <= 1e-5
    layer.unmerge()
    assert np.abs(layer.weight.asnumpy() - w).max() <= 1e-5
    assert np.abs(layer(Tensor(x)).asnumpy() - before).max() <= 1e-5


def test_dora_merge_refuses_a_zero_magnitude_and_leaves_w():
    layer = _dora()
    w = layer.weight.asnumpy().copy()
    m = layer.mindpet_delta_lora_magnitude.asnumpy().copy()
    m[3] = 0.0
    layer.mindpet_delta_lora_magnitude.set_data(Tensor(m))
    with pytest.raises(ValueError, match="magnitude holds 1 zeros"):
        layer.merge()
    assert not layer.merged and np.array_equal(layer.weight.asnumpy(), w)


def test_use_dora_must_be_bool():
    with pytest.raises(TypeError, match="use_dora must be a bool"):
        LoRADense(4, 3, 2, 4, use_dora="yes")


# ---- PiSSA / OLoRA ------------------------------------------------------------------------------
def _plain(n_in=16, n_out=12, rank=4, **kw):
    w = _rand(n_out, n_in, seed=21)
    dense = nn.Dense(n_in, n_out, weight_init=Tensor(w), bias_init="zeros")
    return LoRADense.from_dense(dense, rank, 8, **kw), w


@pytest.mark.parametrize("use_dora", [False, True])
@pytest.mark.parametrize("method", ["pissa", "olora"])
def test_weight_init_keeps_the_function_and_takes_the_principal_part(method, use_dora):
    layer, w = _plain(use_dora=use_dora)
    x = _rand(5, 16, seed=22)
    before = layer(Tensor(x)).asnumpy()
    layer.init_from_weight(method)
    a, b = layer.mindpet_delta_lora_a.asnumpy(), layer.mindpet_delta_lora_b.asnumpy()
    w64 = w.astype(np.float64)
    if method == "pissa":  # s·B·A = the best rank-4 approximation (numpy SVD)
        u, sig, vt = np.linalg.svd(w64)
        expect = (u[:, :4] * sig[:4]) @ vt[:4]
    else:  # s·B·A = s·Q_r·R_r of numpy's QR
        q, r = np.linalg.qr(w64)
        expect = layer.scaling * q[:, :4] @ r[:4]
    np.testing.assert_allclose(layer.scaling * b.astype(np.float64) @ a, expect, atol=1e-5)
    np.testing.assert_allclose(layer.weight.asnumpy(), w64 - expect, atol=1e-5)  # the base keeps the residual
    np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), before, atol=1e-5)
    a0, b0 = layer.lora_init_factors
    assert np.array_equal(a0, a) and np.array_equal(b0, b)


def test_pissa_niter_is_close_to_the_exact_svd():
    rng = np.random.default_rng(0)
    u, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    v, _ = np.linalg.qr(rng.standard_normal((16, 16)))
    w = (u * (2.0 ** -np.arange(12))) @ v[:12]  # a decaying spectrum
    dense = nn.Dense(16, 12, weight_init=Tensor(w.astype(np.float32)), has_bias=False)
    layer = LoRADense.from_dense(dense, 3, 6)
    layer.init_from_weight("pissa", niter=8)  # error ~ (sigma_4 / sigma_3)^(2 niter + 1)
    got = layer.scaling * layer.mindpet_delta_lora_b.asnumpy().astype(np.float64) @ layer.mindpet_delta_lora_a.asnumpy()
    np.testing.assert_allclose(got, (u[:, :3] * 2.0 ** -np.arange(3)) @ v[:3], atol=1e-5)


def test_weight_init_errors_leave_the_layer_unchanged():
    layer, w = _plain(n_in=16, n_out=3, rank=4)
    a = layer.mindpet_delta_lora_a.asnumpy().copy()
    with pytest.raises(ValueError, match=r"pissa needs lora_rank <= min\(in_channels, out_channels\) = 3"):
        layer.init_from_weight("pissa")
    with pytest.raises(ValueError, match="method must be one of"):
        layer.init_from_weight("loftq")
    assert np.array_equal(layer.weight.asnumpy(), w) and np.array_equal(layer.mindpet_delta_lora_a.asnumpy(), a)
    assert layer.lora_init_factors is None


def test_plain_lora_factors_give_the_update_to_the_original_weight():
    layer, w = _plain()
    layer.init_from_weight("pissa")
    rng = np.random.default_rng(5)  # "training": new A and B
    a = layer.mindpet_delta_lora_a.asnumpy() + rng.standard_normal((4, 16)).astype(np.float32) * 0.1
    b = layer.mindpet_delta_lora_b.asnumpy() + rng.standard_normal((12, 4)).astype(np.float32) * 0.1
    a2, b2 = plain_lora_factors(a, b, *layer.lora_init_factors)
    assert a2.shape == (8, 16) and b2.shape == (12, 8)
    trained = layer.weight.asnumpy().astype(np.float64) + layer.scaling * b.astype(np.float64) @ a
    np.testing.assert_allclose(w + layer.scaling * b2.astype(np.float64) @ a2, trained, atol=1e-5)


def test_parse_weight_init():
    assert parse_weight_init("pissa") == ("pissa", None)
    assert parse_weight_init("pissa_niter_16") == ("pissa", 16)
    assert parse_weight_init("olora") == ("olora", None)
    assert parse_weight_init(True) is None and parse_weight_init("gaussian") is None
    assert parse_weight_init("pissa_niter_x") is None


def test_dora_dropout_follows_set_train_in_graph_mode():
    """set_train switches the compiled DoRA form: eval = no dropout (the numpy form), train = dropped."""
    layer = _dora(lora_dropout=0.3, has_bias=False)
    x = _rand(6, 12, seed=8)
    w, _, a, bm, m = _arrays(layer)
    plain = ref.dora_forward(x, w, None, a, bm, m, S)
    layer.set_train(False)
    np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), plain, rtol=1e-5, atol=1e-5)
    layer.set_train(True)
    assert np.abs(layer(Tensor(x)).asnumpy() - plain).max() > 1e-2
    layer.set_train(False)
    np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), plain, rtol=1e-5, atol=1e-5)


def test_lora_linear_refuses_dora():
    with pytest.raises(ValueError, match="use_dora=True is supported on LoRADense"):
        LoRALinear(4, 3, 2, 4, use_dora=True)
