"""A compact Llama in plain MindSpore, with MindFormers' parameter names.

Its configuration (``LlamaConfig``: the keys of a MindFormers ``model_config`` it reads or skips,
and the parameter shapes a config implies) lives beside it in ``llama_config.py``.

The network is small enough to read in one sitting and runs on CPU in GRAPH_MODE and
PYNATIVE_MODE. Its parameters carry the names MindFormers gives its Llama
(``model.layers.0.attention.wq.weight``, ``model.tok_embeddings.embedding_weight``, ...), so a
MindFormers ``pet_config`` such as ``target_modules: '.*wq|.*wk|.*wv|.*wo'`` selects the same layers
here, and MindFormers Llama checkpoints load by name.

Layout choices that matter for checkpoints:

* Every projection is a ``mindspore.nn.Dense(in, out, has_bias=False)`` stored as an attribute
  (``wq``, ``wk``, ``wv``, ``wo`` of ``attention``; ``w1``, ``w2``, ``w3`` of ``feed_forward``) and
  called as ``self.wq(x)``, so it can be replaced by a subclass of ``nn.Dense`` with ``setattr`` on
  its parent cell. Weights are ``[out, in]`` as in ``nn.Dense``.
* Rotary embeddings use the Hugging Face / MindFormers "rotate_half" layout: the tables are the cos
  and sin of the half frequencies concatenated with themselves, and ``q' = q*cos + rotate_half(q)*sin``
  with ``rotate_half([x1, x2]) = [-x2, x1]``. A Hugging Face ``LlamaForCausalLM`` checkpoint therefore
  converts by renaming only (``q_proj -> wq``, ``gate_proj -> w1``, ``down_proj -> w2``,
  ``up_proj -> w3``, ...): no permutation of the q/k rows is needed (Meta's original checkpoints,
  which use interleaved pairs, need the permutation Hugging Face's converter applies).
* The rotary tables and the causal mask are plain tensors computed once: they are constants of the
  graph, not parameters, and are not written to checkpoints.

Input / label convention (MindFormers'): ``construct(input_ids)`` returns float32 logits
``[B, S, vocab]``. ``construct(input_ids, labels)`` with ``labels`` of the same shape (the data rows
hold ``seq_length + 1`` tokens) feeds ``input_ids[:, :-1]``, predicts ``labels[:, 1:]`` and returns
the mean cross-entropy over the positions whose label is not ``ignore_token_id``.

Precision: matmuls run in ``compute_dtype``; RMSNorm in ``layernorm_compute_type``; softmax in
``softmax_compute_type``; rotary in ``rotary_dtype``; the loss and the returned logits are float32.
Parameters are stored in ``param_init_type``; when it differs from ``compute_dtype`` each Dense is
switched to ``compute_dtype`` with MindSpore's ``Cell.to_float`` (a cell swapped in later should do
the same). The defaults here are float32 everywhere because this model targets CPU, where MindSpore
has no bfloat16 batch matmul; MindFormers' own defaults are float16.
"""
import logging
import math

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore import dtype as mstype
from mindspore.common.initializer import Normal, initializer

from mindpet_lite.models.llama_config import LlamaConfig, _as_config, count_params, llama_param_shapes

logger = logging.getLogger(__name__)

__all__ = ["LlamaConfig", "LlamaForCausalLM", "llama_param_shapes", "count_params", "causal_lm_loss",
           "recompute_layers"]


# ------------------------------------------------------------------------------------------------
# Constants
# ------------------------------------------------------------------------------------------------
def _rotary_tables(length, head_dim, theta):
    """cos, sin ``[length, head_dim]`` (float64 numpy) in the rotate_half layout."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    freqs = np.outer(np.arange(length, dtype=np.float64), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb), np.sin(emb)


def _mask_value(dtype):
    return -65504.0 if dtype == mstype.float16 else -1e9


def _causal_mask(length, dtype):
    """Additive mask ``[length, length]``: 0 on and below the diagonal, very negative above."""
    upper = np.triu(np.ones((length, length), dtype=np.float32), k=1)
    return Tensor(upper * _mask_value(dtype), dtype)


def _dense(in_features, out_features, cfg):
    dense = nn.Dense(in_features, out_features, weight_init=Normal(sigma=cfg.initializer_range),
                     has_bias=False, dtype=cfg.param_init_type)
    if cfg.param_init_type != cfg.compute_dtype:
        dense.to_float(cfg.compute_dtype)
    return dense


# ------------------------------------------------------------------------------------------------
# Cells
# ------------------------------------------------------------------------------------------------
class LlamaRMSNorm(nn.Cell):
    """``x / sqrt(mean(x^2) + eps) * weight``, computed in ``compute_type``, returned in ``out_type``.

    Parameter: ``weight`` of shape ``[dim]``, initialised to ones.
    """

    def __init__(self, dim, eps=1e-5, compute_type=mstype.float32, out_type=mstype.float32,
                 param_type=mstype.float32):
        super().__init__()
        self.weight = ms.Parameter(initializer("ones", (dim,), param_type), name="weight")
        self.eps = eps
        self.compute_type = compute_type
        self.out_type = out_type

    def construct(self, x):
        shape = x.shape
        # on rows of a 2-D view: CPU reductions over the last axis of an N-D tensor (and the
        # gradients of the broadcasts below, which are such reductions) run ~8x slower than on 2-D
        x = ops.reshape(ops.cast(x, self.compute_type), (-1, shape[-1]))
        variance = _mean_rows(ops.square(x))
        # same-shape products (see _same_shape)
        x = x * _same_shape(ops.rsqrt(variance + self.eps), x)
        x = x * _same_shape(ops.cast(self.weight, self.compute_type), x)
        return ops.reshape(ops.cast(x, self.out_type), shape)


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


class LlamaAttention(nn.Cell):
    """Causal self-attention with grouped-query heads (``n_kv_heads`` key/value heads).

    Query head ``h`` reads key/value head ``h // (num_heads // n_kv_heads)``, as Hugging Face's
    ``repeat_kv``. The groups are batched (queries of a group stacked along the sequence axis), so
    keys and values are never copied and there is no loop over heads.
    """

    def __init__(self, config):
        super().__init__()
        cfg = config
        self.num_heads = cfg.num_heads
        self.num_kv_heads = cfg.num_kv_heads
        self.n_rep = cfg.num_heads // cfg.num_kv_heads
        self.head_dim = cfg.head_dim
        self.scale = 1.0 / math.sqrt(cfg.head_dim)
        self.compute_dtype = cfg.compute_dtype
        self.softmax_dtype = cfg.softmax_compute_type
        self.rotary_dtype = cfg.rotary_dtype
        h = cfg.hidden_size
        self.wq = _dense(h, cfg.num_heads * cfg.head_dim, cfg)
        self.wk = _dense(h, cfg.num_kv_heads * cfg.head_dim, cfg)
        self.wv = _dense(h, cfg.num_kv_heads * cfg.head_dim, cfg)
        self.wo = _dense(cfg.num_heads * cfg.head_dim, h, cfg)
        self.matmul_qk = ops.BatchMatMul(transpose_b=True)
        self.matmul_pv = ops.BatchMatMul()
        self.softmax = _Softmax()

    def construct(self, x, cos, sin, mask):
        """x ``[B, S, H]`` (compute dtype); cos, sin ``[S, D]``; mask ``[S, S]`` additive."""
        b, s, _ = x.shape
        nh, nkv, rep, d = self.num_heads, self.num_kv_heads, self.n_rep, self.head_dim
        q = _heads_first(self.wq(x), d)
        k = _heads_first(self.wk(x), d)
        v = _heads_first(self.wv(x), d)
        q = _apply_rotary(q, cos, sin, self.rotary_dtype, self.compute_dtype) * self.scale
        k = _apply_rotary(k, cos, sin, self.rotary_dtype, self.compute_dtype)
        # [B, nkv, rep*S, D] x [B, nkv, S, D]^T -> [B, nkv, rep*S, S]
        q = ops.reshape(q, (b, nkv, rep * s, d))
        scores = ops.reshape(self.matmul_qk(q, k), (b, nkv, rep, s, s))
        scores = ops.cast(scores, self.softmax_dtype)
        scores = scores + _same_shape(mask, scores)
        probs = ops.cast(self.softmax(scores), self.compute_dtype)
        out = self.matmul_pv(ops.reshape(probs, (b, nkv, rep * s, s)), v)
        return self.wo(_heads_last(ops.reshape(out, (b, nh, s, d))))


class LlamaFeedForward(nn.Cell):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, config):
        super().__init__()
        h, ffn = config.hidden_size, config.ffn_hidden_size
        self.w1 = _dense(h, ffn, config)
        self.w2 = _dense(ffn, h, config)
        self.w3 = _dense(h, ffn, config)

    def construct(self, x):
        return self.w2(ops.silu(self.w1(x)) * self.w3(x))


class LlamaDecodeLayer(nn.Cell):
    """Pre-norm block: ``x + attention(norm(x))``, then ``x + feed_forward(norm(x))``."""

    def __init__(self, config):
        super().__init__()
        norm_args = dict(eps=config.rms_norm_eps, compute_type=config.layernorm_compute_type,
                         out_type=config.compute_dtype, param_type=config.param_init_type)
        self.attention_norm = LlamaRMSNorm(config.hidden_size, **norm_args)
        self.attention = LlamaAttention(config)
        self.ffn_norm = LlamaRMSNorm(config.hidden_size, **norm_args)
        self.feed_forward = LlamaFeedForward(config)

    def construct(self, x, cos, sin, mask):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask)
        return x + self.feed_forward(self.ffn_norm(x))


class LlamaEmbedding(nn.Cell):
    """Token embedding with MindFormers' parameter name ``embedding_weight`` ``[vocab, hidden]``."""

    def __init__(self, vocab_size, hidden_size, sigma=0.02, param_type=mstype.float32,
                 out_type=mstype.float32):
        super().__init__()
        self.embedding_weight = ms.Parameter(
            initializer(Normal(sigma=sigma), (vocab_size, hidden_size), param_type), name="embedding_weight")
        self.out_type = out_type
        # MindSpore's CPU Gather has no bfloat16 kernel: cast the table first in that case only
        self.cast_first = param_type == mstype.bfloat16

    def construct(self, input_ids):
        weight = self.embedding_weight
        if self.cast_first:
            weight = ops.cast(weight, self.out_type)
        return ops.cast(ops.gather(weight, input_ids, 0), self.out_type)


class LlamaModel(nn.Cell):
    """Embedding, decoder layers and final norm: ``input_ids [B, S]`` -> hidden ``[B, S, H]``."""

    def __init__(self, config):
        super().__init__()
        cfg = config
        self.tok_embeddings = LlamaEmbedding(cfg.vocab_size, cfg.hidden_size, cfg.initializer_range,
                                             cfg.param_init_type, cfg.compute_dtype)
        self.layers = nn.CellList([LlamaDecodeLayer(cfg) for _ in range(cfg.num_layers)])
        self.norm_out = LlamaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.layernorm_compute_type,
                                     cfg.compute_dtype, cfg.param_init_type)
        cos, sin = _rotary_tables(cfg.rotary_length, cfg.head_dim, cfg.theta)
        self.max_length = cfg.rotary_length
        self.freqs_cos = Tensor(cos, cfg.rotary_dtype)
        self.freqs_sin = Tensor(sin, cfg.rotary_dtype)
        self.causal_mask = _causal_mask(cfg.rotary_length, cfg.softmax_compute_type)

    def construct(self, input_ids):
        s = input_ids.shape[1]
        if s > self.max_length:
            raise ValueError(f"input_ids has {s} tokens a row, more than the model's maximum "
                             f"{self.max_length} (seq_length / max_position_embedding + 1)")
        cos = self.freqs_cos[:s]
        sin = self.freqs_sin[:s]
        mask = self.causal_mask[:s, :s]
        x = self.tok_embeddings(input_ids)
        for layer in self.layers:
            x = layer(x, cos, sin, mask)
        return self.norm_out(x)


def recompute_layers(net):
    """Mark every decoder layer of ``net`` for recomputation; returns how many were marked.

    Only each layer's input is kept for the backward, which runs the layer's forward again (MindSpore's
    ``Cell.recompute``, GRAPH_MODE): activation memory for about one more forward of the blocks. Call
    it after ``get_pet_model`` so the LoRA cells swapped into the layers are marked too.
    """
    layers = [cell for _, cell in net.cells_and_names() if isinstance(cell, LlamaDecodeLayer)]
    for layer in layers:
        layer.recompute()
    return len(layers)


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


class LlamaForCausalLM(nn.Cell):
    """The compact Llama with its LM head.

    Args:
        config: a ``LlamaConfig`` or a MindFormers ``model_config`` dict.

    Inputs:
        - **input_ids** (Tensor) - int32 ``[B, S]``.
        - **labels** (Tensor, optional) - int ``[B, S]``, same shape as ``input_ids``.

    Outputs:
        Without ``labels``: float32 logits ``[B, S, vocab_size]``. With ``labels``: the float32 scalar
        mean cross-entropy of predicting ``labels[:, 1:]`` from ``input_ids[:, :-1]``, over the
        positions whose label is not ``config.ignore_token_id``.

    Raises:
        TypeError, ValueError: the config is invalid (raised before any cell is built).
    """

    def __init__(self, config):
        super().__init__()
        self.config = _as_config(config)
        cfg = self.config
        if cfg.compute_dtype == mstype.bfloat16 and ms.get_context("device_target") == "CPU":
            logger.warning("compute_dtype bfloat16 will not run on CPU (MindSpore has no bfloat16 "
                           "BatchMatMul CPU kernel); use float32 or float16 there")
        self.model = LlamaModel(cfg)
        self.tie_word_embeddings = cfg.tie_word_embeddings
        if not cfg.tie_word_embeddings:
            self.lm_head = _dense(cfg.hidden_size, cfg.vocab_size, cfg)
        self.matmul_tied = ops.MatMul(transpose_b=True)
        self.compute_dtype = cfg.compute_dtype
        self.vocab_size = cfg.vocab_size
        self.ignore_token_id = cfg.ignore_token_id

    def _logits(self, input_ids):
        hidden = self.model(input_ids)
        if self.tie_word_embeddings:
            b, s, h = hidden.shape
            weight = ops.cast(self.model.tok_embeddings.embedding_weight, self.compute_dtype)
            logits = ops.reshape(self.matmul_tied(ops.reshape(hidden, (b * s, h)), weight),
                                 (b, s, self.vocab_size))
        else:
            logits = self.lm_head(hidden)
        return ops.cast(logits, mstype.float32)

    def construct(self, input_ids, labels=None):
        if labels is None:
            return self._logits(input_ids)
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels must have the shape of input_ids {input_ids.shape}, "
                             f"got {labels.shape}")
        logits = self._logits(input_ids[:, :-1])
        return causal_lm_loss(logits, labels[:, 1:], self.ignore_token_id)
