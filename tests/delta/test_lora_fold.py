"""LoRADense's folded form x·(W + s·B·A)ᵀ with its hand-written backward, against numpy.

Both forms compute the same function, so matching numpy does not show which one ran: every test that
expects a form swaps in counting twins (`_spy`) of the folded matmul and of the branch's x·Aᵀ matmul
and checks the counts. The counters are Parameters bumped inside the graph, so they count in
GRAPH_MODE as well; the folded cell's hand-written bprop is counted in PYNATIVE_MODE (GRAPH_MODE
refuses a Parameter inside a user bprop).
"""
import mindspore as ms
import numpy as np
import pytest
from mindspore import Parameter, Tensor, nn, ops

from mindpet_lite.delta.lora_fold import FoldedLoRAMatMul, fold_pays
from tests import reference as ref
from tests.delta.test_lora import _SumLoss, _arrays, _layer, _rand

F32, F16 = ms.float32, ms.float16


def _counter(name):
    return Parameter(Tensor(0, ms.int32), name=name, requires_grad=False)


class _CountingFold(FoldedLoRAMatMul):
    """The layer's own folded matmul (construct and bprop inherited) that counts its forward runs."""

    def __init__(self, scaling):
        super().__init__(scaling)
        self.calls = _counter("fold_calls")

    def construct(self, x, weight, lora_a, lora_b):
        ops.assign_add(self.calls, Tensor(1, ms.int32))
        return super().construct(x, weight, lora_a, lora_b)


class _CountingFoldBackward(_CountingFold):
    """... that also counts the runs of its hand-written bprop (PYNATIVE_MODE only)."""

    def __init__(self, scaling):
        super().__init__(scaling)
        self.bprops = _counter("fold_bprops")

    def bprop(self, x, weight, lora_a, lora_b, out, dout):
        ops.assign_add(self.bprops, Tensor(1, ms.int32))
        return super().bprop(x, weight, lora_a, lora_b, out, dout)


class _CountingMatMul(nn.Cell):
    """The branch's x·Aᵀ (MatMul transpose_b) that counts its runs: the branch ran iff it counts."""

    def __init__(self):
        super().__init__()
        self.matmul = ops.MatMul(transpose_b=True)
        self.calls = _counter("branch_calls")

    def construct(self, x, w):
        ops.assign_add(self.calls, Tensor(1, ms.int32))
        return self.matmul(x, w)


def _spy(layer, backward=False):
    """Swap counting twins into `layer`; returns counts() -> {'fold', 'branch'[, 'fold_bprop']}."""
    layer.folded_matmul = (_CountingFoldBackward if backward else _CountingFold)(layer.scaling)
    layer.lora_a_matmul = _CountingMatMul()

    def counts():
        out = {"fold": int(layer.folded_matmul.calls.asnumpy()), "branch": int(layer.lora_a_matmul.calls.asnumpy())}
        if backward:
            out["fold_bprop"] = int(layer.folded_matmul.bprops.asnumpy())
        return out

    return counts


def test_fold_rule():
    assert not fold_pays(1, 4096, 4096)  # decoding: the branch
    assert fold_pays(1024, 512, 512)  # a training batch: fold
    assert fold_pays(4096, 1024, 1024)


@pytest.mark.parametrize("shape", [(64, 12), (4, 16, 12)], ids=["2d", "3d"])
@pytest.mark.parametrize("activation", [None, "relu"])  # relu: exact on CPU, unlike tanh
@pytest.mark.parametrize("frozen", [True, False], ids=["frozen_w", "trained_w"])
def test_folded_forward_and_grads_match_numpy(mode, shape, activation, frozen):
    layer = _layer(activation=activation)
    rows = int(np.prod(shape[:-1]))
    assert layer._use_fold(shape)  # pylint: disable=protected-access
    assert fold_pays(rows, 12, 10)
    layer.weight.requires_grad = not frozen
    backward = mode == ms.PYNATIVE_MODE
    counts = _spy(layer, backward)
    x, g = _rand(*shape, seed=5), _rand(*shape[:-1], 10, seed=6)
    w, b, a, bm = _arrays(layer)
    s = ref.lora_scaling(8, 4)

    y = layer(Tensor(x)).asnumpy()
    np.testing.assert_allclose(y, ref.lora_forward(x, w, b, a, bm, s, activation), rtol=1e-5, atol=2e-5)
    assert counts() == dict(fold=1, branch=0, **({"fold_bprop": 0} if backward else {}))

    net = _SumLoss(layer)
    params = [layer.mindpet_delta_lora_a, layer.mindpet_delta_lora_b] + ([] if frozen else [layer.weight])
    dx, grads = ms.grad(net, grad_position=0, weights=params)(Tensor(x), Tensor(g))
    rdx, rda, rdb = ref.lora_grads(x, w, b, a, bm, s, g, activation)
    np.testing.assert_allclose(dx.asnumpy(), rdx, rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(grads[0].asnumpy(), rda, rtol=1e-4, atol=2e-4)
    np.testing.assert_allclose(grads[1].asnumpy(), rdb, rtol=1e-4, atol=2e-4)
    # the gradient's forward ran the fold (whose bprop is the hand-written one), never the branch
    assert counts() == dict(fold=2, branch=0, **({"fold_bprop": 1} if backward else {}))
    if not frozen:  # dW = dzᵀ·x, with dz = g·act'(z)
        x2, g2 = x.reshape(rows, 12).astype(np.float64), g.reshape(rows, 10).astype(np.float64)
        z = x2 @ w.T + s * (x2 @ a.T) @ bm.T + b
        dz = g2 * ref.ACTIVATIONS[activation][1](z)
        np.testing.assert_allclose(grads[2].asnumpy(), dz.T @ x2, rtol=1e-4, atol=2e-4)


def test_forced_forms_agree(mode):
    """8 rows would take the branch; _fold_mode forces either form, and the forced one is what runs."""
    x = Tensor(_rand(8, 12, seed=7))
    outs = []
    for fold in (True, False):
        layer = _layer()
        layer._fold_mode = fold  # pylint: disable=protected-access
        counts = _spy(layer)
        outs.append(layer(x).asnumpy())
        assert counts() == ({"fold": 1, "branch": 0} if fold else {"fold": 0, "branch": 1})
    np.testing.assert_allclose(outs[0], outs[1], rtol=1e-5, atol=1e-5)
    w, b, a, bm = _arrays(_layer())
    np.testing.assert_allclose(outs[0], ref.lora_forward(x.asnumpy(), w, b, a, bm, ref.lora_scaling(8, 4)),
                               rtol=1e-5, atol=2e-5)


def test_the_rule_picks_the_form_that_runs(mode):
    """Left to itself (_fold_mode None) the layer folds for many rows and takes the branch for few."""
    for rows, fold in ((64, True), (2, False)):
        layer = _layer()
        assert layer._use_fold((rows, 12)) == fold  # pylint: disable=protected-access
        counts = _spy(layer)
        x = _rand(rows, 12, seed=rows)
        w, b, a, bm = _arrays(layer)
        np.testing.assert_allclose(layer(Tensor(x)).asnumpy(), ref.lora_forward(x, w, b, a, bm, ref.lora_scaling(8, 4)),
                                   rtol=1e-5, atol=2e-5)
        assert counts() == ({"fold": 1, "branch": 0} if fold else {"fold": 0, "branch": 1})


def test_no_fold_for_half_precision_or_dropout():
    assert not _layer(compute=F16)._use_fold((4096, 12))  # pylint: disable=protected-access
    assert not _layer(lora_dropout=0.1)._use_fold((4096, 12))  # pylint: disable=protected-access
    assert _layer()._use_fold((4096, 12))  # pylint: disable=protected-access


def test_merge_unmerge_on_the_folded_path(mode):
    layer = _layer(activation="tanh")
    counts = _spy(layer)
    x = Tensor(_rand(64, 12, seed=12))
    before = layer(x).asnumpy()
    assert counts() == {"fold": 1, "branch": 0}
    layer.merge()
    np.testing.assert_allclose(layer(x).asnumpy(), before, rtol=0, atol=1e-5)
    assert counts() == {"fold": 1, "branch": 0}  # merged: the plain matmul, no LoRA form at all
    layer.unmerge()
    np.testing.assert_allclose(layer(x).asnumpy(), before, rtol=0, atol=1e-5)
    assert counts() == {"fold": 2, "branch": 0}


@pytest.mark.parametrize("parallel_mode, fold", [
    ("semi_auto_parallel", False), ("auto_parallel", False), ("hybrid_parallel", False),
    ("data_parallel", True), ("stand_alone", True)])
def test_operator_parallel_takes_the_branch(parallel_mode, fold):
    """Under semi-auto / auto / hybrid parallel the layer runs the branch, whose operators carry its
    shard() strategies, even where the fold would pay (64 float32 rows, also when _fold_mode forces it).

    PYNATIVE_MODE: on CPU a GRAPH_MODE compile under semi-auto parallel fails ("Invalid communication
    backend: CPU for semi_auto_parallel/auto_parallel mode", MindSpore 2.9), while the choice, read from
    the auto-parallel context, is the same in both modes."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    ms.set_auto_parallel_context(parallel_mode=parallel_mode)
    try:
        for forced in (None, True):
            layer = _layer()
            layer._fold_mode = forced  # pylint: disable=protected-access
            assert layer._use_fold((64, 12)) == fold  # pylint: disable=protected-access
            counts = _spy(layer)
            x = _rand(64, 12, seed=7)
            w, b, a, bm = _arrays(layer)
            np.testing.assert_allclose(layer(Tensor(x)).asnumpy(),
                                       ref.lora_forward(x, w, b, a, bm, ref.lora_scaling(8, 4)), rtol=1e-5, atol=2e-5)
            assert counts() == ({"fold": 1, "branch": 0} if fold else {"fold": 0, "branch": 1})
    finally:
        ms.reset_auto_parallel_context()
        ms.set_context(mode=ms.GRAPH_MODE)
    assert _layer()._use_fold((64, 12))  # pylint: disable=protected-access
