"""LlamaConfig: the compact Llama's shape and precision, read from a MindFormers ``model_config`` block.

The key handling lives here, beside the model (``models/llama.py``): which keys the model reads, which
MindFormers keys it knowingly skips, the SwiGLU width rule, and the parameter shapes a config implies
(``llama_param_shapes``, ``count_params``), computed without building the network.
"""
import dataclasses
import logging
import math
from typing import Optional

import numpy as np

from mindpet_lite import _checks

logger = logging.getLogger(__name__)

__all__ = ["LlamaConfig", "llama_param_shapes", "count_params"]

_DTYPE_KEYS = ("compute_dtype", "layernorm_compute_type", "softmax_compute_type", "rotary_dtype",
               "param_init_type")

# Keys MindFormers' LlamaConfig / PretrainedConfig (and their run YAMLs) carry that this model does
# not use. They are accepted without a spelling check (several are close to a used key, e.g.
# bos_token_id ~ pad_token_id) and listed in ``LlamaConfig.ignored_keys``.
_KNOWN_MINDFORMERS_KEYS = frozenset({
    "type", "model_type", "architectures", "auto_register", "name_or_path",
    "bos_token_id", "embedding_init_type", "qkv_has_bias", "qkv_concat",
    "parallel_config", "moe_config", "use_past_shard", "extend_method", "scaling_factor",
    "rope_scaling", "is_dynamic", "use_rope_slice", "use_flash_attention", "use_ring_attention",
    "use_attn_mask_compression", "use_eod_attn_mask_compression", "use_paged_attention",
    "parallel_optimizer", "fine_grain_interleave", "pp_interleave_num", "offset",
    "checkpoint_name_or_path", "max_length", "min_length", "num_beams",
    "length_penalty", "no_repeat_ngram_size", "block_size", "num_blocks", "quant", "quant_config",
    "pet_config", "compute_in_2d", "input_sliced_sig", "rmsnorm_compute_2d", "chunk_prefill",
    "init_method_std", "residual_dtype", "llm_backend", "parallel_decoding_params",
    "use_fused_rope", "use_fused_swiglu", "use_cache", "return_dict", "output_attentions",
    "output_hidden_states", "torchscript", "tokenizer_class", "is_encoder_decoder", "num_labels",
    "batch_valid_length", "use_rmsnorm", "use_fused_rms_norm", "lm_head_bias", "is_sample_acceleration",
})

# MindFormers' generation keys of a model_config: not the model's, read by predict mode
# (mindpet_lite.infer.predict.generation_settings); accepted here and not reported as ignored.
GENERATION_KEYS = frozenset({"do_sample", "top_k", "top_p", "temperature", "repetition_penalty",
                             "max_decode_length", "max_new_tokens", "eos_token_id"})


def _ffn_hidden_size(hidden_size, intermediate_size, multiple_of, ffn_dim_multiplier):
    """The SwiGLU width: ``intermediate_size`` if given, else MindFormers' / Meta's rule."""
    if intermediate_size is not None:
        return intermediate_size
    hidden = int(2 * 4 * hidden_size / 3)
    if ffn_dim_multiplier:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


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
    ``use_past`` (MindFormers' key) makes ``models.generation.generate`` decode with a KV cache.
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
    use_past: bool = False
    ignored_keys: list = dataclasses.field(default_factory=list, compare=False)

    def __post_init__(self):
        c = _checks
        for key in ("hidden_size", "num_layers", "num_heads", "vocab_size", "seq_length", "multiple_of"):
            c.check_positive_int(key, getattr(self, key))
        for key in ("n_kv_heads", "intermediate_size", "max_position_embedding", "batch_size"):
            if getattr(self, key) is not None:
                c.check_positive_int(key, getattr(self, key))
        if self.ffn_dim_multiplier is not None:
            c.check_number("ffn_dim_multiplier", self.ffn_dim_multiplier, above=0)
        for key in ("rms_norm_eps", "theta", "initializer_range"):
            c.check_number(key, getattr(self, key), above=0)
        for key in _DTYPE_KEYS:
            setattr(self, key, c.to_float_dtype(key, getattr(self, key)))
        c.check_bool("tie_word_embeddings", self.tie_word_embeddings)
        self.use_past = c.to_bool("use_past", self.use_past)
        if self.pad_token_id is not None:
            c.check_int("pad_token_id", self.pad_token_id)
        c.check_int("ignore_token_id", self.ignore_token_id)
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
    def from_dict(cls, model_config, section="model_config"):
        """A config from a MindFormers ``model_config`` dict (or a ``LlamaConfig``, returned as is).

        Unknown keys are tolerated (MindFormers' model configs carry many this model does not use)
        unless they are close to a used key; ``section`` names the block in error messages.

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
                raise TypeError(f"{section} must be a dict, got {_checks.describe(model_config)}") from None
        kwargs, ignored = _checks.split_known_keys(section, model_config, cls.used_keys(),
                                                   known_ignored=_KNOWN_MINDFORMERS_KEYS | GENERATION_KEYS)
        ignored = [key for key in ignored if key not in GENERATION_KEYS]
        _check_unsupported(model_config)
        try:
            config = cls(**kwargs)
        except (TypeError, ValueError) as err:
            raise type(err)(f"{section}: {err}") from err
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


def rotary_tables(length, head_dim, theta):
    """cos, sin ``[length, head_dim]`` (float64 numpy) in the rotate_half layout."""
    inv_freq = 1.0 / (theta ** (np.arange(0, head_dim, 2, dtype=np.float64) / head_dim))
    freqs = np.outer(np.arange(length, dtype=np.float64), inv_freq)
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb), np.sin(emb)


def check_prefix_encoder(encoder, config):
    """A prefix encoder fits a Llama of ``config``: a Cell with ``pre_seq_len`` (T) and ``(num_layers,
    num_heads, kv_channels)`` equal to the model's layers, KV heads and head size, whose
    ``encoder(batch_size, dtype)`` gives one ``[2, B, n_kv_heads, T, head_dim]`` (keys, values) a layer
    (``delta.PrefixEncoder``). None passes."""
    if encoder is None:
        return
    if not callable(encoder) or not hasattr(encoder, "cells_and_names"):
        raise TypeError(f"encoder must be a mindspore.nn.Cell or None, got {type(encoder).__name__}")
    got = tuple(getattr(encoder, key, None) for key in ("num_layers", "num_heads", "kv_channels"))
    want = (config.num_layers, config.num_kv_heads, config.head_dim)
    if got != want or not isinstance(getattr(encoder, "pre_seq_len", None), int):
        raise ValueError(f"encoder (num_layers, num_heads, kv_channels) must be {want} (the model's layers, KV heads "
                         f"and head size) with an int pre_seq_len, got {got}")
