"""Held-out evaluation of a causal LM under teacher forcing: loss, token accuracy, exact match.

It scores the held-out data before, during (``do_eval``) and after training. The per-token
log-likelihood is the one the training loss uses (:func:`mindpet_lite.models.llama.token_log_likelihood`).
"""
from mindspore import nn, ops
from mindspore import dtype as mstype

from mindpet_lite.models.llama import token_log_likelihood

__all__ = ["evaluate"]


class _EvalCell(nn.Cell):
    """Summed NLL, label count, argmax hits, and rows whose every label token is the argmax."""

    def __init__(self, network, ignore_index=-100):
        super().__init__(auto_prefix=False)
        self.network = network
        self.ignore_index = ignore_index

    def construct(self, input_ids, labels):
        logits = ops.cast(self.network(input_ids[:, :-1]), mstype.float32)
        target = labels[:, 1:]
        picked, keep = token_log_likelihood(logits, target, self.ignore_index)
        nll = -picked
        keep_f = ops.cast(keep, mstype.float32)
        hit = ops.logical_and(ops.equal(ops.cast(ops.argmax(logits, -1), target.dtype), target), keep)
        row_ok = ops.logical_and(ops.all(ops.logical_or(hit, ops.logical_not(keep)), -1), ops.any(keep, -1))
        return (ops.sum(nll * keep_f), ops.sum(keep_f), ops.sum(ops.cast(hit, mstype.float32)),
                ops.sum(ops.cast(row_ok, mstype.float32)))


def evaluate(net, dataset, ignore_index=-100):
    """Held-out metrics of a causal LM over a dataset of ``(input_ids, labels)`` batches.

    Returns {'loss': mean NLL per label token, 'token_accuracy': share of label tokens that are the
    argmax, 'exact_match': share of rows whose every label token is the argmax (under teacher forcing
    this equals greedy decoding reproducing the whole answer), 'tokens', 'rows'}.
    """
    cell = _EvalCell(net, ignore_index)
    was_training = net.training
    net.set_train(False)
    nll = tokens = hits = rows_ok = rows = 0.0
    for input_ids, labels in dataset.create_tuple_iterator(num_epochs=1, do_copy=False):
        a, b, c, d = cell(input_ids, labels)
        nll += float(a.asnumpy())
        tokens += float(b.asnumpy())
        hits += float(c.asnumpy())
        rows_ok += float(d.asnumpy())
        rows += input_ids.shape[0]
    net.set_train(was_training)
    if not tokens:
        raise ValueError("the evaluation data has no label tokens (every label is the ignore index)")
    return {"loss": nll / tokens, "token_accuracy": hits / tokens, "exact_match": rows_ok / rows,
            "tokens": int(tokens), "rows": int(rows)}
