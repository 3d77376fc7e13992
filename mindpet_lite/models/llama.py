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

from mindpet_lite.delta.graph_mode import invalidate_compiled_graphs
from mindpet_lite.models.llama_config import (LlamaConfig, _as_config, check_prefix_encoder, count_params,
                                              llama_param_shapes, rotary_tables)
from mindpet_lite.models.generation import generate as _generate
from mindpet_lite.models.llama_ops import (_Softmax, _apply_rotary, _heads_first, _heads_last, _mean_rows,
                                           _same_shape)
from mindpet_lite.models.loss import causal_lm_loss, token_log_likelihood

logger = logging.getLogger(__name__)

__all__ = ["LlamaConfig", "LlamaForCausalLM", "llama_param_shapes", "count_params", "causal_lm_loss",
           "token_log_likelihood", "recompute_layers"]


# ------------------------------------------------------------------------------------------------
# Constants
# ------------------------------------------------------------------------------------------------
def _mask_value(dtype):
    return -65504.0 if dtype == mstype.float16 else -1e9


def _causal_mask(length, dtype):
    """Additive mask ``[length, length]``: 0 on and below the diagonal, very negative above."""
    upper = np.triu(np.ones((length, length), dtype=np.float32), k=1)
    return Tensor(upper * _mask_value(dtype), dtype)


def _project(dense, x, rows):
    """``dense(x)``, or ``dense(x, rows)`` for a projection that runs a per-row selection (a LoRA cell
    with several adapters: ``rows`` [B, K], see graph/adapters.py); ``rows`` None is a graph constant."""
    if rows is None or not getattr(dense, "takes_rows", False):
        return dense(x)
    return dense(x, rows)


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

    def _qkv(self, x, cos, sin, rows):
        """q (scaled), k, v of ``x [B, S, H]`` in ``[B, heads, S, D]``, rotary applied."""
        d = self.head_dim
        b, s, _ = x.shape
        if s == 1:  # one token a row (decode): [B, 1, N*D] -> [B, N, 1, D] is a reshape
            q = ops.reshape(_project(self.wq, x, rows), (b, self.num_heads, 1, d))
            k = ops.reshape(_project(self.wk, x, rows), (b, self.num_kv_heads, 1, d))
            v = ops.reshape(_project(self.wv, x, rows), (b, self.num_kv_heads, 1, d))
        else:
            q = _heads_first(_project(self.wq, x, rows), d)
            k = _heads_first(_project(self.wk, x, rows), d)
            v = _heads_first(_project(self.wv, x, rows), d)
        q = _apply_rotary(q, cos, sin, self.rotary_dtype, self.compute_dtype) * self.scale
        k = _apply_rotary(k, cos, sin, self.rotary_dtype, self.compute_dtype)
        return q, k, v

    def _attend(self, q, k, v, mask, rows):
        """Grouped attention of ``q [B, nh, S, D]`` over ``k, v [B, nkv, T, D]``; ``mask`` adds to the
        scores ``[B, nkv, rep, S, T]`` (any shape that broadcasts). Returns ``[B, S, H]``."""
        b, _, s, d = q.shape
        t = k.shape[2]
        nh, nkv, rep = self.num_heads, self.num_kv_heads, self.n_rep
        # [B, nkv, rep*S, D] x [B, nkv, T, D]^T -> [B, nkv, rep*S, T]
        q = ops.reshape(q, (b, nkv, rep * s, d))
        scores = ops.reshape(self.matmul_qk(q, k), (b, nkv, rep, s, t))
        scores = ops.cast(scores, self.softmax_dtype)
        scores = scores + _same_shape(mask, scores)
        probs = ops.cast(self.softmax(scores), self.compute_dtype)
        out = self.matmul_pv(ops.reshape(probs, (b, nkv, rep * s, t)), v)
        if s == 1:
            return _project(self.wo, ops.reshape(out, (b, 1, nh * d)), rows)
        return _project(self.wo, _heads_last(ops.reshape(out, (b, nh, s, d))), rows)

    def _with_prefix(self, x, cos, sin, rows, prefix):
        """q, k, v of ``x``, the prefix's keys / values (``prefix [2, B, nkv, T, D]``, no rotary: they
        hold no position) put before the sequence's."""
        q, k, v = self._qkv(x, cos, sin, rows)
        if prefix is not None:
            k = ops.concat((ops.cast(prefix[0], k.dtype), k), 2)
            v = ops.concat((ops.cast(prefix[1], v.dtype), v), 2)
        return q, k, v

    def construct(self, x, cos, sin, mask, rows=None, prefix=None):
        """x ``[B, S, H]`` (compute dtype); cos, sin ``[S, D]``; mask ``[S, T + S]`` additive (T the
        prefix length, 0 without one); rows: see _project; prefix: see _with_prefix, or None."""
        q, k, v = self._with_prefix(x, cos, sin, rows, prefix)
        return self._attend(q, k, v, mask, rows)

    def prefill(self, x, cos, sin, mask, k_cache, v_cache, rows=None, prefix=None):
        """``construct`` that also writes the prefix's and its own keys / values into rows
        ``0..T+S-1`` of the caches ``[B, nkv, L, D]``; returns ``(out, k_cache, v_cache)``."""
        q, k, v = self._with_prefix(x, cos, sin, rows, prefix)
        s = k.shape[2]
        k_cache = ops.concat((ops.cast(k, k_cache.dtype), k_cache[:, :, s:]), 2)
        v_cache = ops.concat((ops.cast(v, v_cache.dtype), v_cache[:, :, s:]), 2)
        return self._attend(q, k, v, mask, rows), k_cache, v_cache

    def decode(self, x, cos, sin, mask, write, k_cache, v_cache, rows=None):
        """One token a row: x ``[B, 1, H]``; cos, sin ``[B, 1, 1, D]`` (each row's position);
        ``write`` bool ``[B, 1, L, 1]`` marks the cache row each batch row writes; ``mask``
        ``[B, 1, 1, 1, L]`` additive. Returns ``(out, k_cache, v_cache)``."""
        q, k, v = self._qkv(x, cos, sin, rows)
        k_cache = ops.select(_same_shape(write, k_cache), _same_shape(k, k_cache), k_cache)
        v_cache = ops.select(_same_shape(write, v_cache), _same_shape(v, v_cache), v_cache)
        return self._attend(q, k_cache, v_cache, mask, rows), k_cache, v_cache


class LlamaFeedForward(nn.Cell):
    """SwiGLU: ``w2(silu(w1 x) * w3 x)``."""

    def __init__(self, config):
        super().__init__()
        h, ffn = config.hidden_size, config.ffn_hidden_size
        self.w1 = _dense(h, ffn, config)
        self.w2 = _dense(ffn, h, config)
        self.w3 = _dense(h, ffn, config)

    def construct(self, x, rows=None):
        return _project(self.w2, ops.silu(_project(self.w1, x, rows)) * _project(self.w3, x, rows), rows)


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

    def construct(self, x, cos, sin, mask, rows=None, prefix=None):
        x = x + self.attention(self.attention_norm(x), cos, sin, mask, rows, prefix)
        return x + self.feed_forward(self.ffn_norm(x), rows)

    def prefill(self, x, cos, sin, mask, k_cache, v_cache, rows=None, prefix=None):
        out, k_cache, v_cache = self.attention.prefill(self.attention_norm(x), cos, sin, mask, k_cache, v_cache,
                                                       rows, prefix)
        x = x + out
        return x + self.feed_forward(self.ffn_norm(x), rows), k_cache, v_cache

    def decode(self, x, cos, sin, mask, write, k_cache, v_cache, rows=None):
        out, k_cache, v_cache = self.attention.decode(self.attention_norm(x), cos, sin, mask, write,
                                                      k_cache, v_cache, rows)
        x = x + out
        return x + self.feed_forward(self.ffn_norm(x), rows), k_cache, v_cache


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
    """Embedding, decoder layers and final norm: ``input_ids [B, S]`` -> hidden ``[B, S, H]``.
    ``prefix_encoder`` (see ``set_prefix_encoder``): T key / value slots every query sees; tokens keep
    positions 0..S-1 (MindFormers'); the KV cache holds the prefix in its first T slots."""

    def __init__(self, config):
        super().__init__()
        cfg = config
        self.tok_embeddings = LlamaEmbedding(cfg.vocab_size, cfg.hidden_size, cfg.initializer_range,
                                             cfg.param_init_type, cfg.compute_dtype)
        self.layers = nn.CellList([LlamaDecodeLayer(cfg) for _ in range(cfg.num_layers)])
        self.norm_out = LlamaRMSNorm(cfg.hidden_size, cfg.rms_norm_eps, cfg.layernorm_compute_type,
                                     cfg.compute_dtype, cfg.param_init_type)
        cos, sin = rotary_tables(cfg.rotary_length, cfg.head_dim, cfg.theta)
        self.max_length = cfg.rotary_length
        self.freqs_cos = Tensor(cos, cfg.rotary_dtype)
        self.freqs_sin = Tensor(sin, cfg.rotary_dtype)
        self.causal_mask = _causal_mask(cfg.rotary_length, cfg.softmax_compute_type)
        self.mask_value = _mask_value(cfg.softmax_compute_type)
        self.cache_rows = Tensor(np.arange(cfg.rotary_length, dtype=np.int32))
        self.compute_dtype = cfg.compute_dtype
        self.prefix_encoder = None
        self.prefix_length = 0

    def _prefix(self, batch, s):
        """(per-layer prefix key / values or None, the ``[S, T + S]`` mask: every query sees the prefix)."""
        mask = self.causal_mask[:s, :s]
        if self.prefix_encoder is None:
            return None, mask
        prefix = self.prefix_encoder(batch, self.compute_dtype)
        return prefix, ops.concat((ops.zeros((s, self.prefix_length), mask.dtype), mask), 1)

    def construct(self, input_ids, rows=None):
        b, s = input_ids.shape
        if s > self.max_length:
            raise ValueError(f"input_ids has {s} tokens a row, more than the model's maximum "
                             f"{self.max_length} (seq_length / max_position_embedding + 1)")
        cos = self.freqs_cos[:s]
        sin = self.freqs_sin[:s]
        prefix, mask = self._prefix(b, s)
        x = self.tok_embeddings(input_ids)
        i = 0
        for layer in self.layers:
            x = layer(x, cos, sin, mask, rows, None if prefix is None else prefix[i])
            i = i + 1
        return self.norm_out(x)

    def prefill(self, input_ids, caches, rows=None):
        """``construct`` that also fills rows ``0..T+S-1`` of ``caches`` (a tuple ``(k0, v0, k1, v1,
        ...)`` of ``[B, nkv, L, D]``: the prefix's T rows, then the prompt's); returns
        ``(hidden [B, S, H], caches)``."""
        b, s = input_ids.shape
        cos = self.freqs_cos[:s]
        sin = self.freqs_sin[:s]
        prefix, mask = self._prefix(b, s)
        x = self.tok_embeddings(input_ids)
        out = ()
        i = 0
        for layer in self.layers:
            x, k_cache, v_cache = layer.prefill(x, cos, sin, mask, caches[i], caches[i + 1], rows,
                                                None if prefix is None else prefix[i // 2])
            out = out + (k_cache, v_cache)
            i = i + 2
        return self.norm_out(x), out

    def decode(self, input_ids, positions, caches, rows=None):
        """One token a row, ``input_ids [B, 1]`` at ``positions [B]`` (int32): writes its keys / values
        at cache row ``T + position`` (T: prefix length) and attends to rows ``0..T+position``. Returns
        ``(hidden [B, 1, H], caches)``. ``rows``: each row's adapter selection (see _project), or None."""
        b = input_ids.shape[0]
        length = caches[0].shape[2]
        cos = ops.reshape(ops.gather(self.freqs_cos, positions, 0), (b, 1, 1, -1))
        sin = ops.reshape(ops.gather(self.freqs_sin, positions, 0), (b, 1, 1, -1))
        slots = ops.broadcast_to(ops.reshape(self.cache_rows[:length], (1, length)), (b, length))
        pos = ops.broadcast_to(ops.reshape(positions + self.prefix_length, (b, 1)), (b, length))
        write = ops.reshape(ops.equal(slots, pos), (b, 1, length, 1))
        visible = ops.less_equal(slots, pos)
        zeros = ops.zeros((b, length), self.causal_mask.dtype)
        mask = ops.reshape(ops.select(visible, zeros, zeros + self.mask_value), (b, 1, 1, 1, length))
        x = self.tok_embeddings(input_ids)
        out = ()
        i = 0
        for layer in self.layers:
            x, k_cache, v_cache = layer.decode(x, cos, sin, mask, write, caches[i], caches[i + 1], rows)
            out = out + (k_cache, v_cache)
            i = i + 2
        return self.norm_out(x), out


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

    def _head(self, hidden, rows=None):
        """float32 logits ``[B, S, vocab]`` of the final hidden states ``[B, S, H]``."""
        if self.tie_word_embeddings:
            b, s, h = hidden.shape
            weight = ops.cast(self.model.tok_embeddings.embedding_weight, self.compute_dtype)
            logits = ops.reshape(self.matmul_tied(ops.reshape(hidden, (b * s, h)), weight),
                                 (b, s, self.vocab_size))
        else:
            logits = _project(self.lm_head, hidden, rows)
        return ops.cast(logits, mstype.float32)

    def _logits(self, input_ids):
        return self._head(self.model(input_ids))

    def _head_at(self, hidden, index, rows=None):
        """float32 logits ``[B, vocab]`` of row ``index[b]`` (int32 ``[B]``) of each ``hidden [B, S, H]``."""
        b = hidden.shape[0]
        picked = ops.gather(hidden, ops.reshape(index, (b, 1)), 1, 1)  # [B, 1, H]
        return ops.reshape(self._head(picked, rows), (b, self.vocab_size))

    # -- generation (models/generation.py calls these through graph cells of its own) -------------
    def set_prefix_encoder(self, encoder):
        """Prefix keys / values for every layer (see ``check_prefix_encoder``; None removes them)."""
        check_prefix_encoder(encoder, self.config)
        self.model.prefix_encoder = encoder
        self.model.prefix_length = 0 if encoder is None else encoder.pre_seq_len
        invalidate_compiled_graphs(self)  # the encoder is a constant of compiled graphs

    def new_cache(self, batch_size, length):
        """Zero KV caches for ``batch_size`` rows of ``length`` positions (plus the prefix's, if any):
        the tuple ``(k0, v0, k1, v1, ...)`` of ``[B, n_kv_heads, T + length, head_dim]`` in ``compute_dtype``."""
        cfg = self.config
        shape = (batch_size, cfg.num_kv_heads, self.model.prefix_length + length, cfg.head_dim)
        return tuple(ops.zeros(shape, cfg.compute_dtype) for _ in range(2 * cfg.num_layers))

    def prefill(self, input_ids, last_index, caches, rows=None):
        """Right-padded prompts ``input_ids [B, S]``: the logits ``[B, vocab]`` at ``last_index [B]``
        (each row's last prompt token) and the caches with rows ``0..S-1`` filled."""
        hidden, caches = self.model.prefill(input_ids, caches, rows)
        return self._head_at(hidden, last_index, rows), caches

    def decode(self, input_ids, positions, caches, rows=None):
        """One token a row (``input_ids [B, 1]`` at ``positions [B]``): logits ``[B, vocab]``, caches."""
        hidden, caches = self.model.decode(input_ids, positions, caches, rows)
        b = input_ids.shape[0]
        return ops.reshape(self._head(hidden, rows), (b, self.vocab_size)), caches

    def generate(self, input_ids, max_new_tokens, **kwargs):
        """``models.generation.generate(self, input_ids, max_new_tokens, ...)``: see there (``do_sample``,
        ``top_k``, ``top_p``, ``temperature``, ``repetition_penalty``, ``eos_token_id``,
        ``pad_token_id``, ``seed``, ``streamer``, ``adapter_names``, ``use_past``)."""
        return _generate(self, input_ids, max_new_tokens, **kwargs)

    def logits_at(self, input_ids, index, rows=None):
        """No cache: the full causal forward of ``input_ids [B, S]``, logits ``[B, vocab]`` at ``index [B]``."""
        return self._head_at(self.model(input_ids, rows), index, rows)

    def construct(self, input_ids, labels=None):
        if labels is None:
            return self._logits(input_ids)
        if labels.shape != input_ids.shape:
            raise ValueError(f"labels must have the shape of input_ids {input_ids.shape}, "
                             f"got {labels.shape}")
        logits = self._logits(input_ids[:, :-1])
        return causal_lm_loss(logits, labels[:, 1:], self.ignore_token_id)
