"""evaluate(): loss, token accuracy, exact match, tokens and rows against numpy (tests/reference.py).

The expected numbers come from the float64 numpy Llama of tests/reference.py fed the network's
parameters, never from the network's own outputs; the labels are chosen from those reference logits
so that every outcome occurs: a row that is entirely right, a row right but for one token, a row with
no label token at all, rows of random labels.
"""
import mindspore as ms
import mindspore.dataset as ds
import numpy as np
import pytest
from mindspore import Tensor

from mindpet_lite.models import LlamaForCausalLM
from mindpet_lite.train import evaluate
from tests.reference import eval_metrics, reference_logits

CFG = dict(hidden_size=32, num_layers=1, num_heads=4, n_kv_heads=2, vocab_size=48, seq_length=8,
           intermediate_size=48)
IGNORE = -100
ROWS, COLS = 6, CFG["seq_length"] + 1  # input_ids and labels: the logits of ids[:, :-1] predict ids[:, 1:]


def _params(net):
    return {name: p.asnumpy().astype(np.float64) for name, p in net.parameters_and_names()}


@pytest.fixture(scope="module")
def case():
    """(net, input_ids, labels, reference logits [ROWS, COLS - 1, V]) with one label layout a row."""
    ms.set_seed(3)
    net = LlamaForCausalLM(CFG)
    rng = np.random.default_rng(0)
    head = net.lm_head.weight  # logits of order 1, not 0.02: clear argmaxes
    head.set_data(Tensor(rng.standard_normal(head.shape).astype(np.float32) * 0.5))
    ids = rng.integers(0, CFG["vocab_size"], (ROWS, COLS)).astype(np.int32)
    logits = reference_logits(_params(net), CFG, ids[:, :-1])
    best = logits.argmax(-1).astype(np.int32)  # the reference's argmax at every position
    target = np.full((ROWS, COLS - 1), IGNORE, np.int32)  # target[:, t] is the label of logits[:, t]
    target[0, 3:] = best[0, 3:]  # a masked prompt, then an answer the model gets entirely right
    target[1] = best[1]
    target[1, 5] = (best[1, 5] + 1) % CFG["vocab_size"]  # right but for one token
    # row 2: no label token at all
    target[3, 2:] = rng.integers(0, CFG["vocab_size"], COLS - 3)  # random labels
    target[4, 7] = best[4, 7]  # a single label token, right
    target[5] = rng.integers(0, CFG["vocab_size"], COLS - 1)
    labels = np.concatenate([np.full((ROWS, 1), IGNORE, np.int32), target], axis=1)
    # the comparison is only meaningful if float32 and float64 agree on every argmax that counts
    top2 = np.sort(logits, -1)[..., -2:]
    assert (top2[..., 1] - top2[..., 0])[target != IGNORE].min() > 1e-3
    return net, ids, labels, logits


@pytest.fixture
def pynative():
    """PYNATIVE_MODE: no graph to compile for each new batch shape (the graph case is covered above)."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=ms.GRAPH_MODE)


def _dataset(ids, labels, batch_size=3):
    return ds.NumpySlicesDataset((ids, labels), column_names=["input_ids", "labels"], shuffle=False).batch(batch_size)


def test_reference_layout_has_both_exact_match_outcomes(case):
    """The reference itself: rows 0 and 4 match, row 1 (one token wrong) and row 2 (no tokens) do not."""
    _, _, labels, logits = case
    want = eval_metrics(logits, labels[:, 1:], IGNORE)
    assert want["row_match"].tolist() == [True, False, False, False, True, False]
    assert want["exact_match"] == pytest.approx(2 / 6)
    assert 0 < want["token_accuracy"] < 1
    assert want["tokens"] == 5 + 8 + 0 + 6 + 1 + 8


def test_evaluate_matches_numpy(case, mode):
    net, ids, labels, logits = case
    # the network computes the function the reference describes (so the argmaxes agree)
    np.testing.assert_allclose(net(Tensor(ids[:, :-1])).asnumpy(), logits, rtol=0, atol=1e-4)
    net.set_train(True)
    got = evaluate(net, _dataset(ids, labels), ignore_index=IGNORE)
    assert net.training  # put back as it was
    want = eval_metrics(logits, labels[:, 1:], IGNORE)
    assert sorted(got) == ["exact_match", "loss", "rows", "token_accuracy", "tokens"]
    assert got["tokens"] == want["tokens"] and got["rows"] == want["rows"] == ROWS
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6)
    assert got["token_accuracy"] == pytest.approx(want["token_accuracy"], rel=1e-9)
    assert got["exact_match"] == pytest.approx(want["exact_match"], rel=1e-9)


def test_batching_does_not_change_the_metrics(case, pynative):
    """Per-token means over the whole set, not means of batch means (batches of 4 and 2 rows)."""
    net, ids, labels, logits = case
    got = evaluate(net, _dataset(ids, labels, batch_size=4), ignore_index=IGNORE)
    want = eval_metrics(logits, labels[:, 1:], IGNORE)
    assert got["loss"] == pytest.approx(want["loss"], rel=1e-5, abs=1e-6)
    assert (got["token_accuracy"], got["exact_match"], got["tokens"], got["rows"]) == pytest.approx(
        (want["token_accuracy"], want["exact_match"], want["tokens"], want["rows"]), rel=1e-9)


def test_no_label_token_is_an_error(case, pynative):
    net, ids, _, _ = case
    with pytest.raises(ValueError, match="no label tokens"):
        evaluate(net, _dataset(ids, np.full_like(ids, IGNORE)), ignore_index=IGNORE)
