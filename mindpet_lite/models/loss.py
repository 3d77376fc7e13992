"""The causal-LM loss of the package's models: log-likelihood of the label tokens, masked mean.

(``models.llama`` re-exports both names.)
"""
from mindspore import ops
from mindspore import dtype as mstype

__all__ = ["token_log_likelihood", "causal_lm_loss"]


def token_log_likelihood(logits, labels, ignore_index=-100):
    """Log-probability of each label token, and which positions count: the masked cross-entropy's core.

    ``logits[b, t]`` (``[B, S, V]``) scores the token ``labels[b, t]`` (``[B, S]``; shift before
    calling). Returns ``(picked, keep)``: float32 ``[B, S]`` log-probabilities of the labels (of token
    0 where the label is ``ignore_index``) and the bool ``[B, S]`` mask of the other positions. The
    training loss (:func:`causal_lm_loss`) and the held-out evaluation both read it.
    """
    logits = ops.cast(logits, mstype.float32)
    labels = ops.cast(labels, mstype.int32)
    keep = ops.not_equal(labels, ignore_index)
    safe = ops.select(keep, labels, ops.zeros_like(labels))
    # one fused LogSoftmax kernel (and LogSoftmaxGrad): ops.logsumexp expands into ReduceMax, Sub,
    # Exp, ReduceSum, Log and differentiates through the max; on CPU that costs ~9x as much
    # (value and gradient at [4, 256, 4096]: 72 ms against 8 ms, benchmarks/README.md)
    log_probs = ops.log_softmax(logits, -1)
    picked = ops.squeeze(ops.gather_elements(log_probs, -1, ops.expand_dims(safe, -1)), -1)
    return picked, keep


def causal_lm_loss(logits, labels, ignore_index=-100):
    """Mean cross-entropy of ``logits [B, S, V]`` against aligned ``labels [B, S]``.

    ``logits[b, t]`` scores the token ``labels[b, t]`` (shift before calling). Positions whose label
    equals ``ignore_index`` are left out; with none left the loss is 0. Computed in float32.
    """
    picked, keep = token_log_likelihood(logits, labels, ignore_index)
    weight = ops.cast(keep, mstype.float32)
    return -ops.sum(picked * weight) / ops.maximum(ops.sum(weight), 1.0)
