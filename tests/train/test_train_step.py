"""TrainStep: one update (loss scale, accumulation, global-norm clipping) against numpy.

The optimizer is plain SGD so the update shows the gradient's size (Adam's first step would not).
With the token counts given, micro-batches of different sizes make one update equal to the gradient
of the mean loss over their concatenation (the global batch); without them each micro-batch weighs
the same.
"""
import numpy as np
import pytest
import mindspore as ms
from mindspore import Parameter, Tensor, nn, ops

from mindpet_lite.train.step import TrainStep

from tests.reference import regression_grads, regression_loss, sgd_update

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


def _run_step(w, b, xs, ys, scale, clip, tokens):
    accumulate = len(xs)
    net = _Regression(w, b)
    opt = nn.SGD(net.trainable_params(), learning_rate=LR)
    sense = Parameter(Tensor(scale, ms.float32), name="scale_sense", requires_grad=False)
    accu = opt.parameters.clone(prefix="accu_grads", init="zeros") if accumulate > 1 else None
    common = dict(accumulators=accu, accumulate=accumulate, scale_sense=sense, check_overflow=scale != 1.0,
                  clip_norm=clip)
    step = TrainStep(net, opt, apply=True, **common)
    micro = TrainStep(net, opt, apply=False, **common) if accumulate > 1 else None
    # the regression's loss is a mean over every element of y: those are its "label tokens"
    counts = [Tensor(float(y.size), ms.float32) for y in ys]
    total = Tensor(float(sum(y.size for y in ys)), ms.float32)
    shares = []
    for i, (x, y) in enumerate(zip(xs, ys)):
        cell = step if i == accumulate - 1 else micro
        args = (Tensor(x), Tensor(y)) + ((counts[i], total) if tokens else ())
        shares.append(float(cell(*args).asnumpy()))
    if accumulate > 1:  # the accumulators are zeroed after the update
        assert all(float(np.abs(a.asnumpy()).max()) == 0.0 for a in accu)
    return net, sum(shares)


@pytest.mark.parametrize("scale, accumulate, clip", [
    (1.0, 1, None),      # nothing to scale: gradients go straight to the optimizer
    (1024.0, 1, 0.05),   # static loss scale, clipping active
    (1.0, 2, 0.05),      # accumulation, clipping active
    (8.0, 2, 1e3),       # scale + accumulation, clipping inactive
    (1.0, 3, None),      # accumulation over micro-batches of 4, 2 and 5 rows
    (1.0, 1, 0.05),
])
@pytest.mark.parametrize("tokens", [True, False])
def test_step_matches_numpy(scale, accumulate, clip, tokens):
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(3)
    w = rng.normal(size=(3, 5)).astype(np.float32)
    b = rng.normal(size=(3,)).astype(np.float32)
    rows = [4, 2, 5][:accumulate] if tokens else [4] * accumulate
    xs = [rng.normal(size=(n, 5)).astype(np.float32) for n in rows]
    ys = [rng.normal(size=(n, 3)).astype(np.float32) for n in rows]

    net, loss = _run_step(w, b, xs, ys, scale, clip, tokens)

    w64, b64 = w.astype(np.float64), b.astype(np.float64)
    if tokens:  # one global batch: the gradient of the mean over all its rows
        x_all, y_all = np.concatenate(xs), np.concatenate(ys)
        grads = regression_grads(w64, b64, x_all, y_all)
        want_loss = regression_loss(w64, b64, x_all, y_all)
    else:  # every micro-batch weighs the same
        per_micro = [regression_grads(w64, b64, x, y) for x, y in zip(xs, ys)]
        grads = [sum(g[i] for g in per_micro) / accumulate for i in range(2)]
        want_loss = np.mean([regression_loss(w64, b64, x, y) for x, y in zip(xs, ys)])
    want = sgd_update([w, b], grads, LR, clip)
    np.testing.assert_allclose(net.w.asnumpy(), want[0], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(net.b.asnumpy(), want[1], rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(loss, want_loss, rtol=1e-5)


def test_uneven_micro_batches_equal_one_batch():
    """Accumulation over micro-batches of 4 and 2 rows makes the update of one batch of 6 rows."""
    ms.set_context(mode=ms.GRAPH_MODE)
    rng = np.random.default_rng(5)
    w = rng.normal(size=(3, 5)).astype(np.float32)
    b = rng.normal(size=(3,)).astype(np.float32)
    x, y = rng.normal(size=(6, 5)).astype(np.float32), rng.normal(size=(6, 3)).astype(np.float32)
    split, _ = _run_step(w, b, [x[:4], x[4:]], [y[:4], y[4:]], 1.0, 0.05, True)
    whole, _ = _run_step(w, b, [x], [y], 1.0, 0.05, True)
    np.testing.assert_allclose(split.w.asnumpy(), whole.w.asnumpy(), atol=1e-6)
    np.testing.assert_allclose(split.b.asnumpy(), whole.b.asnumpy(), atol=1e-6)


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
