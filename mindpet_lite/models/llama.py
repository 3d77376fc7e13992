"""A compact Llama in plain MindSpore, with MindFormers' parameter names.

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
import dataclasses
import logging
import math
from typing import Optional

import numpy as np

import mindspore as ms
from mindspore import Tensor, nn, ops
from mindspore import dtype as mstype
from mindspore.common.initializer import Normal, initializer

from mindpet_lite import _checks

logger = logging.getLogger(__name__)

__all__ = ["LlamaConfig", "LlamaForCausalLM", "llama_param_shapes", "count_params", "causal_lm_loss",
           "recompute_layers"]

_DTYPE_KEYS = ("compute_dtype", "layernorm_compute_type", "softmax_compute_type", "rotary_dtype",
               "param_init_type")

# Keys MindFormers' LlamaConfig / PretrainedConfig (and their run YAMLs) carry that this model does
# not use. They are accepted without a spelling check (several are close to a used key, e.g.
# bos_token_id ~ pad_token_id) and listed in ``LlamaConfig.ignored_keys``.
_KNOWN_MINDFORMERS_KEYS = frozenset({
    "type", "model_type", "architectures", "auto_register", "name_or_path",
    "bos_token_id", "eos_token_id", "embedding_init_type", "qkv_has_bias", "qkv_concat",
    "parallel_config", "moe_config", "use_past", "use_past_shard", "extend_method", "scaling_factor",
    "rope_scaling", "is_dynamic", "use_rope_slice", "use_flash_attention", "use_ring_attention",
    "use_attn_mask_compression", "use_eod_attn_mask_compression", "use_paged_attention",
    "parallel_optimizer", "fine_grain_interleave", "pp_interleave_num", "offset",
    "checkpoint_name_or_path", "repetition_penalty", "max_decode_length", "max_length",
    "min_length", "max_new_tokens", "top_k", "top_p", "temperature", "do_sample", "num_beams",
    "length_penalty", "no_repeat_ngram_size", "block_size", "num_blocks", "quant", "quant_config",
    "pet_config", "compute_in_2d", "input_sliced_sig", "rmsnorm_compute_2d", "chunk_prefill",
    "init_method_std", "residual_dtype", "llm_backend", "parallel_decoding_params",
    "use_fused_rope", "use_fused_swiglu", "use_cache", "return_dict", "output_attentions",
    "output_hidden_states", "torchscript", "tokenizer_class", "is_encoder_decoder", "num_labels",
    "batch_valid_length", "use_rmsnorm", "use_fused_rms_norm", "lm_head_bias", "is_sample_acceleration",
})


def _ffn_hidden_size(hidden_size, intermediate_size, multiple_of, ffn_dim_multiplier):
    """The SwiGLU width: ``intermediate_size`` if given, else MindFormers' / Meta's rule."""
    if intermediate_size is not None:
        return intermediate_size
    hidden = int(2 * 4 * hidden_size / 3)
    if ffn_dim_multiplier:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def _check_positive_number(name, value):
    if not _checks.is_number(value):
        hint = ""
        if isinstance(value, str):
            hint = " (YAML reads 1e-5 as a string: write 1.0e-5)"
        raise TypeError(f"{name} must be a number > 0, got {_checks.describe(value)}{hint}")
    if not value > 0:
        raise ValueError(f"{name} must be a number > 0, got {_checks.describe(value)}")
    return value


def _check_optional_int(name, value):
    if value is not None and not _checks.is_int(value):
        raise TypeError(f"{name} must be an int or None, got {_checks.describe(value)}")
    return value


@dataclasses.dataclass
class LlamaConfig:
    """Shape and precision of the compact Llama, read from a MindFormers ``model_config`` block.

    Build it with ``LlamaConfig.from_dict(model_config)``: keys the model uses are checked; keys
    MindFormers uses for other things (``use_flash_attention``, ``offset``, ``pet_config``, ...)
    are accepted and listed in ``ignored_keys``; a key close to one the model uses (``hiden_size``)
    raises ``ValueError`` naming the right one.

    ``intermediate_size=None`` derives the SwiGLU width from ``multiple_of`` and
    ``ffn_dim_multiplier`` (see ``ffn_hidden_size``); ``n_kv_heads=None`` means ``num_heads``.
    ``max_position_embedding`` (default ``seq_length``) sizes the rotary tables.
    """

    hidden_size: int = 4096
    num_layers: int = 32
    num_heads: int = 32
    n_kv_heads: Optional[int] = None
    vocab_size: int = 32000
    seq_length: int = 2048
    max_position_embedding: Optional[int] = None
    intermediate_size: Optional[int] = None
    multiple_of: int = 256
    ffn_dim_multiplier: Optional[float] = None
    rms_norm_eps: float = 1e-5
    theta: float = 10000.0
    compute_dtype: object = "float32"
    layernorm_compute_type: object = "float32"
    softmax_compute_type: object = "float32"
    rotary_dtype: object = "float32"
    param_init_type: object = "float32"
    tie_word_embeddings: bool = False
    pad_token_id: Optional[int] = 0
    ignore_token_id: int = -100
    batch_size: Optional[int] = 1
    initializer_range: float = 0.02
    ignored_keys: list = dataclasses.field(default_factory=list, compare=False)

    def __post_init__(self):
        c = _checks
        for key in ("hidden_size", "num_layers", "num_heads", "vocab_size", "seq_length", "multiple_of"):
            c.check_positive_int(key, getattr(self, key))
        for key in ("n_kv_heads", "intermediate_size", "max_position_embedding", "batch_size"):
            if getattr(self, key) is not None:
                c.check_positive_int(key, getattr(self, key))
        if self.ffn_dim_multiplier is not None:
            _check_positive_number("ffn_dim_multiplier", self.ffn_dim_multiplier)
        for key in ("rms_norm_eps", "theta", "initializer_range"):
            _check_positive_number(key, getattr(self, key))
        for key in _DTYPE_KEYS:
            setattr(self, key, c.to_float_dtype(key, getattr(self, key)))
        c.check_bool("tie_word_embeddings", self.tie_word_embeddings)
        _check_optional_int("pad_token_id", self.pad_token_id)
        if not c.is_int(self.ignore_token_id):
            raise TypeError(f"ignore_token_id must be an int, got {c.describe(self.ignore_token_id)}")
        if self.num_heads % self.num_kv_heads:
            raise ValueError(f"num_heads must be divisible by n_kv_heads ({self.num_kv_heads}), "
                             f"got num_heads={self.num_heads}")
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size must be divisible by num_heads ({self.num_heads}), "
                             f"got hidden_size={self.hidden_size}")
        if self.head_dim % 2:
            raise ValueError(f"hidden_size / num_heads (the head size) must be even for rotary "
                             f"embeddings, got hidden_size={self.hidden_size}, num_heads={self.num_heads}")

    # -- derived sizes ---------------------------------------------------------------------------
    @property
    def num_kv_heads(self):
        """``n_kv_heads``, or ``num_heads`` when it is None."""
        return self.num_heads if self.n_kv_heads is None else self.n_kv_heads

    @property
    def head_dim(self):
        return self.hidden_size // self.num_heads

    @property
    def ffn_hidden_size(self):
        """The SwiGLU width actually used (``intermediate_size`` or the multiple_of rule)."""
        return _ffn_hidden_size(self.hidden_size, self.intermediate_size, self.multiple_of,
                                self.ffn_dim_multiplier)

    @property
    def rotary_length(self):
        """Rows of the rotary tables: room for ``seq_length + 1`` tokens (a raw data row)."""
        return max(self.seq_length, self.max_position_embedding or 0) + 1

    # -- construction ----------------------------------------------------------------------------
    @classmethod
    def used_keys(cls):
        """The keys this model reads from a ``model_config``."""
        return tuple(f.name for f in dataclasses.fields(cls) if f.name != "ignored_keys")

    @classmethod
    def from_dict(cls, model_config):
        """A config from a MindFormers ``model_config`` dict (or a ``LlamaConfig``, returned as is).

        Raises:
            TypeError: ``model_config`` is not a mapping, or a value has the wrong type.
            ValueError: a key is a misspelling of a used key, or a value is out of range.
        """
        if isinstance(model_config, cls):
            return model_config
        if not isinstance(model_config, dict):
            try:
                model_config = dict(model_config)
            except (TypeError, ValueError):
                raise TypeError(f"model_config must be a dict, got {_checks.describe(model_config)}") from None
        used = cls.used_keys()
        kwargs, ignored = {}, []
        for key, value in model_config.items():
            if key in used:
                kwargs[key] = value
            elif key in _KNOWN_MINDFORMERS_KEYS:
                ignored.append(key)
            else:
                hint = _checks.closest(key, used)
                if hint is not None:
                    raise ValueError(f"model_config: unknown key '{key}'; did you mean '{hint}'? "
                                     f"(keys the Llama uses: {', '.join(used)})")
                ignored.append(key)
        _check_unsupported(model_config)
        config = cls(**kwargs)
        config.ignored_keys = ignored
        if ignored:
            logger.debug("LlamaConfig ignores model_config keys: %s", ", ".join(ignored))
        return config

    def to_dict(self):
        """The used keys as a plain dict (dtypes as names), loadable by ``from_dict``."""
        names = {v: k for k, v in _checks.FLOAT_DTYPES.items()}
        out = {}
        for key in self.used_keys():
            value = getattr(self, key)
            out[key] = names.get(value, value) if key in _DTYPE_KEYS else value
        return out


def _check_unsupported(model_config):
    """Refuse ignored keys whose value would change the math this model computes."""
    if model_config.get("qkv_has_bias"):
        raise ValueError("qkv_has_bias must be False (the compact Llama has no projection biases), "
                         f"got {_checks.describe(model_config['qkv_has_bias'])}")
    method = model_config.get("extend_method")
    if method not in (None, "None", "") or model_config.get("scaling_factor", 1.0) not in (1, 1.0, None):
        logger.warning("extend_method=%r / scaling_factor=%r are ignored: the compact Llama uses plain "
                       "rotary embeddings", method, model_config.get("scaling_factor"))


def _as_config(config):
    if isinstance(config, LlamaConfig):
        return config
    if isinstance(config, dict):
        return LlamaConfig.from_dict(config)
    raise TypeError(f"config must be a LlamaConfig or a model_config dict, got {_checks.describe(config)}")


# ------------------------------------------------------------------------------------------------
# Shapes without allocation
# ------------------------------------------------------------------------------------------------
def llama_param_shapes(config):
    """``{parameter name: shape}`` of ``LlamaForCausalLM(config)``, computed without building it.

    The names and the order are those of ``net.parameters_and_names()``.
    """
    cfg = _as_config(config)
    h, hd, ffn = cfg.hidden_size, cfg.head_dim, cfg.ffn_hidden_size
    q_out, kv_out = cfg.num_heads * hd, cfg.num_kv_heads * hd
    shapes = {"model.tok_embeddings.embedding_weight": (cfg.vocab_size, h)}
    for i in range(cfg.num_layers):
        p = f"model.layers.{i}."
        shapes[p + "attention_norm.weight"] = (h,)
        shapes[p + "attention.wq.weight"] = (q_out, h)
        shapes[p + "attention.wk.weight"] = (kv_out, h)
        shapes[p + "attention.wv.weight"] = (kv_out, h)
        shapes[p + "attention.wo.weight"] = (h, q_out)
        shapes[p + "ffn_norm.weight"] = (h,)
        shapes[p + "feed_forward.w1.weight"] = (ffn, h)
        shapes[p + "feed_forward.w2.weight"] = (h, ffn)
        shapes[p + "feed_forward.w3.weight"] = (ffn, h)
    shapes["model.norm_out.weight"] = (h,)
    if not cfg.tie_word_embeddings:
        shapes["lm_head.weight"] = (cfg.vocab_size, h)
    return shapes


def count_params(config):
    """Number of parameters of ``LlamaForCausalLM(config)`` (Llama-2-7B: 6,738,415,616)."""
    return sum(math.prod(shape) for shape in llama_param_shapes(config).values())


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
