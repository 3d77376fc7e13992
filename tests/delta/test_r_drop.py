"""rdrop_repeat (MindPet's test: [1, 2, 3, 4] -> [1, 1, 2, 2, 3, 3, 4, 4]) and RDropLoss against numpy,
value and gradient, in both modes."""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Tensor, nn

from mindpet_lite.delta import RDropLoss, rdrop_repeat
from tests import reference as ref


def test_rdrop_repeat_puts_each_row_twice_in_place():
    ids, feats = Tensor(np.array([1, 2, 3, 4])), Tensor(np.arange(6, dtype=np.float32).reshape(3, 2))
    out_ids, out_feats = rdrop_repeat(ids, feats)
    np.testing.assert_array_equal(out_ids.asnumpy(), [1, 1, 2, 2, 3, 3, 4, 4])
    np.testing.assert_array_equal(out_feats.asnumpy(), np.repeat(feats.asnumpy(), 2, axis=0))
    with pytest.raises(TypeError, match=r"items\[1\]"):
        rdrop_repeat(ids, [1, 2])


class _Loss(nn.Cell):
    def __init__(self, labels, alpha):
        super().__init__()
        self.loss, self.labels, self.alpha = RDropLoss(), Tensor(labels), alpha

    def construct(self, logits):
        return self.loss(logits, self.labels, self.alpha)


@pytest.mark.parametrize("alpha", [4, 1.5])
def test_loss_and_grad_match_numpy(mode, alpha):
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((6, 5)).astype(np.float32)
    labels = np.array([1, 1, 0, 0, 4, 4], np.int32)
    loss_fn = RDropLoss()
    got = loss_fn(Tensor(logits), Tensor(labels), alpha).asnumpy()
    np.testing.assert_allclose(got, ref.rdrop_loss(logits, labels, alpha), rtol=1e-5, atol=1e-6)
    grad = ms.grad(_Loss(labels, alpha))(Tensor(logits)).asnumpy()
    eps, num = 1e-4, np.zeros_like(logits, dtype=np.float64)
    for idx in np.ndindex(*logits.shape):  # central differences of the numpy reference
        hi, lo = logits.astype(np.float64), logits.astype(np.float64)
        hi[idx] += eps
        lo[idx] -= eps
        num[idx] = (ref.rdrop_loss(hi, labels, alpha) - ref.rdrop_loss(lo, labels, alpha)) / (2 * eps)
    np.testing.assert_allclose(grad, num, rtol=1e-3, atol=1e-4)


def test_identical_passes_add_no_kl(mode):
    logits = np.repeat(np.random.default_rng(1).standard_normal((3, 4)).astype(np.float32), 2, axis=0)
    labels = np.array([0, 0, 2, 2, 3, 3], np.int32)
    got = RDropLoss()(Tensor(logits), Tensor(labels)).asnumpy()
    ce = -ref.log_softmax(logits)[np.arange(6), labels].mean()
    np.testing.assert_allclose(got, ce, rtol=1e-5, atol=1e-6)


def test_odd_rows_are_refused():
    with pytest.raises(ValueError, match="two rows per example"):
        RDropLoss()(Tensor(np.zeros((3, 4), np.float32)), Tensor(np.zeros(3, np.int32)))
