"""LoRADense's folded form x·(W + s·B·A)ᵀ with its hand-written backward, against numpy."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor

from mindpet_lite.delta.lora import _fold_pays
from tests import reference as ref
from tests.delta.test_lora import _SumLoss, _arrays, _layer, _rand

F32, F16 = ms.float32, ms.float16


def test_fold_rule():
    assert not _fold_pays(1, 4096, 4096)  # decoding: the branch
    assert _fold_pays(1024, 512, 512)  # a training batch: fold
    assert _fold_pays(4096, 1024, 1024)


@pytest.mark.parametrize("shape", [(64, 12), (4, 16, 12)], ids=["2d", "3d"])
@pytest.mark.parametrize("activation", [None, "relu"])  # relu: exact on CPU, unlike tanh
@pytest.mark.parametrize("frozen", [True, False], ids=["frozen_w", "trained_w"])
def test_folded_forward_and_grads_match_numpy(mode, shape, activation, frozen):
    layer = _layer(activation=activation)
    rows = int(np.prod(shape[:-1]))
    assert layer._use_fold(shape)  # pylint: disable=protected-access
    assert _fold_pays(rows, 12, 10)
    layer.weight.requires_grad = not frozen
    x, g = _rand(*shape, seed=5), _rand(*shape[:-1], 10, seed=6)
    w, b, a, bm = _arrays(layer)
    s = ref.lora_scaling(8, 4)

    y = layer(Tensor(x)).asnumpy()
    np.testing.assert_allclose(y, ref.lora_forward(x, w, b, a, bm, s, activation), rtol=1e-5, atol=2e-5)

    net = _SumLoss(layer)
    params = [layer.mindpet_delta_lora_a, layer.mindpet_delta_lora_b] + ([] if frozen else [layer.weight])
    dx, grads = ms.grad(net, grad_position=0, weights=params)(Tensor(x), Tensor(g))
    rdx, rda, rdb = ref.lora_grads(x, w, b, a, bm, s, g, activation)
    np.testing.assert_allclose(dx.asnumpy(), rdx, rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(grads[0].asnumpy(), rda, rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(grads[1].asnumpy(), rdb, rtol=1e-4, atol=2e-4)
    if not frozen:  # dW = dzᵀ·x, with dz = g·act'(z)
        x2, g2 = x.reshape(rows, 12).astype(np.float64), g.reshape(rows, 10).astype(np.float64)
        z = x2 @ w.T + s * (x2 @ a.T) @ bm.T + b
        dz = g2 * ref.ACTIVATIONS[activation][1](z)
        np.testing.assert_allclose(grads[2].asnumpy(), dz.T @ x2, rtol=1e-4, atol=2e-4)


def test_forced_forms_agree(mode):
    x = Tensor(_rand(8, 12, seed=7))
    outs = []
    for fold in (True, False):
        layer = _layer()
        layer._fold_mode = fold  # pylint: disable=protected-access
        outs.append(layer(x).asnumpy())
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_no_fold_for_half_precision_or_dropout():
    assert not _layer(compute=F16)._use_fold((4096, 12))  # pylint: disable=protected-access
    assert not _layer(lora_dropout=0.1)._use_fold((4096, 12))  # pylint: disable=protected-access
    assert _layer()._use_fold((4096, 12))  # pylint: disable=protected-access


def test_merge_unmerge_on_the_folded_path(mode):
    layer = _layer(activation="tanh")
    x = Tensor(_rand(64, 12, seed=12))
    before = layer(x).asnumpy()
    layer.merge()
    np.testing.assert_allclose(layer(x).asnumpy(), before, rtol=0, atol=1e-5)
    layer.unmerge()
    np.testing.assert_allclose(layer(x).asnumpy(), before, rtol=0, atol=1e-5)
