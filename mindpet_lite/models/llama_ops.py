"""Tensor helpers of the compact Llama (models/llama.py), each shaped around a cost of MindSpore's CPU
kernels (broadcasting products, N-D reductions, Transpose); moved here to keep llama.py readable."""
from mindspore import nn, ops


def _same_shape(t, like):
    """``t`` broadcast to ``like``'s shape, explicitly.

    MindSpore's CPU kernels for a broadcasting Mul / Add / Sub / RealDiv keep, for the life of the
    compiled graph, two int64 index arrays of the output's size (4x a float32 output) per kernel,
    forward and backward: ~0.8 GB of resident memory for the tiny benchmark Llama (benchmarks/README.md).
    A BroadcastTo followed by a same-shape product keeps none; its output is ordinary pooled memory."""
    return ops.broadcast_to(t, like.shape)


_ROW_SUM = ops.ReduceSum(keep_dims=True)
_ROW_MEAN = ops.ReduceMean(keep_dims=True)


def _sum_rows(x):
    """Sum over axis 1 of a 2-D tensor, kept: ``[M, K] -> [M, 1]``."""
    return _ROW_SUM(x, 1)


def _mean_rows(x):
    """Mean over axis 1 of a 2-D tensor, kept: ``[M, K] -> [M, 1]``."""
    return _ROW_MEAN(x, 1)


def _apply_rotary(x, cos, sin, rotary_type, out_type):
    """``x*cos + rotate_half(x)*sin`` on ``x [B, N, S, D]`` with tables ``[S, D]``."""
    x = ops.cast(x, rotary_type)
    half = x.shape[-1] // 2
    rotated = ops.concat((-x[..., half:], x[..., :half]), -1)
    return ops.cast(x * _same_shape(cos, x) + rotated * _same_shape(sin, x), out_type)


def _heads_first(x, head_dim):
    """``[B, S, N*D] -> [B, N, S, D]``, by Split + Stack.

    Same as reshape + transpose(0, 2, 1, 3), but MindSpore's CPU Transpose kernel keeps an int64
    position array of the tensor's size per kernel (8 MB per transpose of the benchmark's larger
    Llama, 8 of them a layer with the backward); Split, Stack, Unstack and Concat keep none."""
    return ops.stack(ops.split(x, head_dim, axis=-1), 1)


def _heads_last(x):
    """``[B, N, S, D] -> [B, S, N*D]``, by Unstack + Concat (see _heads_first)."""
    return ops.concat(ops.unstack(x, 1), -1)


class _Softmax(nn.Cell):
    """Softmax over the last axis; its backward ``y * (dy - sum(dy * y))`` with the sum broadcast
    explicitly (MindSpore's own expansion subtracts with a broadcasting Sub, see _same_shape)."""

    def construct(self, x):
        return ops.softmax(x, -1)

    def bprop(self, x, out, dout):  # pylint: disable=unused-argument
        shape = dout.shape
        inner = _sum_rows(ops.reshape(dout * out, (-1, shape[-1])))  # 2-D: see LlamaRMSNorm
        return (out * (dout - ops.reshape(_same_shape(inner, ops.reshape(dout, (-1, shape[-1]))), shape)),)
