"""DoRA (weight-decomposed LoRA, Liu et al. 2024) math for LoRADense: a trainable magnitude m per
output feature rescales each row of the adapted weight to length m,

    y = m / ‖W + s·B·A‖_row ⊙ (x·Wᵀ + s·(x·Aᵀ)·Bᵀ)  (+ bias, activation)

The row norm is a constant of the backward (``stop_gradient``), the paper's section 4.3 choice that
HF PEFT makes too: it saves storing the [out, in] norm graph. With dropout in training the base
product sees the undropped x and the LoRA side the dropped one, as in PEFT:

    y = x·Wᵀ + (m/n - 1) ⊙ (x̃·Wᵀ) + m/n ⊙ s·(x̃·Aᵀ)·Bᵀ,   x̃ = dropout(x)

The norm is computed in float32 whatever the compute dtype (a sum of `in` squares).
"""
import numpy as np
from mindspore import ops
from mindspore import dtype as mstype

LORA_MAGNITUDE_SUFFIX = "magnitude"


def dora_scale(weight, lora_a, lora_b, magnitude, scaling, dtype):
    """m / ‖W + s·B·A‖ per output row ([out], in ``dtype``); no gradient flows into the norm."""
    w = ops.cast(weight, mstype.float32)
    product = ops.matmul(ops.cast(lora_b, mstype.float32), ops.cast(lora_a, mstype.float32))
    adapted = w + product * scaling
    norm = ops.stop_gradient(ops.sqrt(ops.reduce_sum(adapted * adapted, 1)))
    return ops.cast(ops.cast(magnitude, mstype.float32) / norm, dtype)


def row_norms(weight, delta):
    """‖W + ΔW‖ per output row of float32 numpy arrays [out, in] (float64 sums), as float32."""
    adapted = weight.astype(np.float64) + delta.astype(np.float64)
    return np.sqrt(np.sum(adapted * adapted, axis=1)).astype(np.float32)


def dora_merged(weight, delta, magnitude):
    """(W', n): W' = m / n ⊙ (W + ΔW) with n = ‖W + ΔW‖_row; n is what unmerging needs back."""
    norm = row_norms(weight, delta)
    factor = magnitude.astype(np.float64) / norm.astype(np.float64)
    merged = factor[:, None] * (weight.astype(np.float64) + delta.astype(np.float64))
    return merged.astype(np.float32), norm


def dora_unmerged(merged, delta, magnitude, norm):
    """W = W' ⊙ n / m - ΔW: the inverse of :func:`dora_merged` given the n it returned."""
    factor = norm.astype(np.float64) / magnitude.astype(np.float64)
    return (factor[:, None] * merged.astype(np.float64) - delta.astype(np.float64)).astype(np.float32)


def check_magnitude(layer, what, magnitude):
    """A magnitude that can be merged and unmerged: finite, no zero (a zero row loses its direction)."""
    bad = magnitude.size - np.count_nonzero(np.isfinite(magnitude))
    if bad:
        raise ValueError(f"{layer}: cannot {what}: the DoRA magnitude holds {bad} non-finite (NaN / Inf) values "
                         f"of {magnitude.size}; the weight is left unchanged")
    zeros = magnitude.size - np.count_nonzero(magnitude)
    if zeros:
        raise ValueError(f"{layer}: cannot {what}: the DoRA magnitude holds {zeros} zeros (a merged row of "
                         "length 0 cannot be unmerged); the weight is left unchanged")
