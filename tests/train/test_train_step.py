"""TrainStep: one update (loss scale, accumulation, global-norm clipping) against numpy.

The optimizer is plain SGD so the update shows the gradient's size (Adam's first step would not).
"""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from mindpet_lite.train.step import TrainStep

from tests.reference import regression_grads, sgd_update

LR = 0.1


class _Regression(nn.Cell):
    """loss = mean((x W^T + b - y)^2): gradients have a closed form."""

    def __init__(self, w, b):
        super().__init__()
        self.w = Parameter(Tensor(w), name="w")
        self.b = Parameter(Tensor(b), name="b")

    def construct(self, x, y):
        r = ops.matmul(x, self.w.T) + self.b - y
        return ops.mean(r * r)


@pytest.mark.parametrize("scale, accumulate, clip", [
    (1.0, 1, None),      # nothing to scale: gradients go straight to the optimizer
    (1024.0, 1, 0.05),   # static loss scale, clipping active
    (1.0, 2, 0.05),      # accumulation, clipping active
    (8.0, 2, 1e3),       # scale + accumulation, clipping inactive
    (1.0, 1, 0.05),
])
def test_step_matches_numpy(scale, accumulate, clip):
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(3)
    w = rng.normal(size=(3, 5)).astype(np.float32)
    b = rng.normal(size=(3,)).astype(np.float32)
    xs = [rng.normal(size=(4, 5)).astype(np.float32) for _ in range(accumulate)]
    ys = [rng.normal(size=(4, 3)).astype(np.float32) for _ in range(accumulate)]

    net = _Regression(w, b)
    opt = nn.SGD(net.trainable_params(), learning_rate=LR)
    sense = Parameter(Tensor(scale, ms.float32), name="scale_sense", requires_grad=False)
    accu = opt.parameters.clone(prefix="accu_grads", init="zeros") if accumulate > 1 else None
    common = dict(accumulators=accu, accumulate=accumulate, scale_sense=sense, check_overflow=scale != 1.0,
                  clip_norm=clip)
    step = TrainStep(net, opt, apply=True, **common)
    micro = TrainStep(net, opt, apply=False, **common) if accumulate > 1 else None
    for x, y in zip(xs[:-1], ys[:-1]):
        micro(Tensor(x), Tensor(y))
    step(Tensor(xs[-1]), Tensor(ys[-1]))

    per_micro = [regression_grads(w.astype(np.float64), b.astype(np.float64), x, y) for x, y in zip(xs, ys)]
    grads = [sum(g[i] for g in per_micro) / accumulate for i in range(2)]
    want = sgd_update([w, b], grads, LR, clip)
    np.testing.assert_allclose(net.w.asnumpy(), want[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net.b.asnumpy(), want[1], rtol=1e-4, atol=1e-5)
    if accumulate > 1:  # the accumulators are zeroed after the update
        assert all(float(np.abs(a.asnumpy()).max()) == 0.0 for a in accu)


def test_clip_norm_must_be_positive():
    net = _Regression(np.ones((3, 5), np.float32), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="clip_norm must be a number > 0, got 0"):
        TrainStep(net, nn.SGD(net.trainable_params(), learning_rate=LR), clip_norm=0)


def test_numpy_reference_clips():
    """The reference itself: clipping at 0.05 shrinks these gradients (so the cases above test it)."""
    rng = np.random.default_rng(3)
    w, b = rng.normal(size=(3, 5)), rng.normal(size=(3,))
    grads = regression_grads(w, b, rng.normal(size=(4, 5)), rng.normal(size=(4, 3)))
    assert np.sqrt(sum((g ** 2).sum() for g in grads)) > 0.5
