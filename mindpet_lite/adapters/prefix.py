"""Prefix adapters (``pet_type: ptuning2 / prefixtuning``) in files and in HF PEFT's PREFIX_TUNING.

An adapter file holds the encoder's trainable tensors under the network's names
(``model.prefix_encoder.mindpet_delta_ptuning2_embedding.embedding_table``, the MLP's
``..._dense_in.weight`` / ``.bias``, ``..._dense_out.*``) and its metadata records the pet_config and
``"prefix": {pre_seq_len, num_layers, num_kv_heads, head_dim, rope_theta, prefix_projection}``: what
an export needs without the model.

PEFT (``PeftModelForCausalLM`` with ``PREFIX_TUNING``) stores ``prompt_embeddings [T, L * 2 * token_dim]``,
the keys / values themselves (with ``prefix_projection`` the MLP's output: PEFT saves nothing else and
loads it in inference mode). A row reads ``[layer, key / value, KV head, head_dim]``, the same layout as
``delta.PrefixEncoder``'s table. One difference is converted: PEFT runs the sequence at rotary positions
``T..T+S-1`` (its position offset) while this package keeps them at ``0..S-1`` (MindFormers'); a query
rotated by ``T`` more sees a key ``k`` as ours sees ``R(-T) k`` (rotary is a rotation, ``R(a + b) = R(a)
R(b)``), so keys are rotated by ``+T`` on export and by ``-T`` on import, values copied. An imported
adapter is a ``ptuning2`` table without projection (PEFT's MLP is not in its file).
"""
import json
import logging
import os

import numpy as np

from mindpet_lite import _checks, _files
from mindpet_lite.models.llama_config import rotary_tables
from mindpet_lite.pet.prefix_config import Ptuning2Config

logger = logging.getLogger(__name__)

__all__ = ["PREFIX_MARKS", "prefix_metadata", "prefix_tensors_required", "export_peft_prefix", "read_peft_prefix"]

PREFIX_MARKS = ("mindpet_delta_ptuning2_", "mindpet_delta_prefixtuning_")
PREFIX_PET_TYPES = ("ptuning2", "prefixtuning")
ENCODER_PATH = "model.prefix_encoder"  # where LlamaForCausalLM.set_prefix_encoder puts the cell
_DEFAULT_THETA = 10000.0


def is_prefix_config(config):
    return getattr(config, "pet_type", None) in PREFIX_PET_TYPES


def prefix_metadata(net):
    """The ``"prefix"`` metadata entry of a network holding a prefix encoder, or None."""
    encoder = getattr(getattr(net, "model", None), "prefix_encoder", None)
    if encoder is None:
        return None
    return {"pre_seq_len": encoder.pre_seq_len, "num_layers": encoder.num_layers, "num_kv_heads": encoder.num_heads,
            "head_dim": encoder.kv_channels, "rope_theta": float(net.config.theta),
            "prefix_projection": encoder.prefix_projection}


def prefix_tensors_required(net):
    """Names of the prefix encoder's trainable parameters: an adapter loaded onto ``net`` must hold each."""
    return {name for name, p in net.parameters_and_names()
            if p.requires_grad and any(mark in name for mark in PREFIX_MARKS)}


# ------------------------------------------------------------------------------------------------
# the keys / values table and the rotary conversion
# ------------------------------------------------------------------------------------------------
def _tensor(tensors, mark, leaf):
    hits = [k for k in tensors if f"{mark}{leaf}" in k]
    if len(hits) != 1:
        raise ValueError(f"the adapter must hold one tensor named ...{mark}{leaf}, found {len(hits)}: {hits[:3]}")
    return np.asarray(tensors[hits[0]], np.float64)


def keys_values_table(tensors, pet_type, projection):
    """``[T, L * 2 * N * D]`` float64: the encoder's table, through its MLP when it has one (no dropout)."""
    mark = f"mindpet_delta_{pet_type}_"
    table = _tensor(tensors, mark, "embedding.embedding_table")
    if projection:
        hidden = np.tanh(table @ _tensor(tensors, mark, "dense_in.weight").T + _tensor(tensors, mark, "dense_in.bias"))
        table = hidden @ _tensor(tensors, mark, "dense_out.weight").T + _tensor(tensors, mark, "dense_out.bias")
    return table


def rotate_keys(table, shape, by):
    """``table`` with every key (row layout ``[layer, key / value, head, D]``) rotated by ``by`` positions
    (rotate_half convention); values unchanged."""
    t, layers, heads, d, theta = shape
    cos, sin = rotary_tables(abs(by) + 1, d, theta)
    cos, sin = cos[abs(by)], sin[abs(by)] * (1.0 if by >= 0 else -1.0)
    kv = np.array(table, np.float64).reshape(t, layers, 2, heads, d)
    keys = kv[:, :, 0]
    half = d // 2
    rotated = np.concatenate([-keys[..., half:], keys[..., :half]], axis=-1)
    kv[:, :, 0] = keys * cos + rotated * sin
    return kv.reshape(t, -1)


def _shape(prefix):
    try:
        return (_checks.check_positive_int("prefix.pre_seq_len", prefix["pre_seq_len"]),
                _checks.check_positive_int("prefix.num_layers", prefix["num_layers"]),
                _checks.check_positive_int("prefix.num_kv_heads", prefix["num_kv_heads"]),
                _checks.check_positive_int("prefix.head_dim", prefix["head_dim"]),
                float(_checks.check_number("prefix.rope_theta", prefix["rope_theta"], above=0)))
    except (KeyError, TypeError) as err:
        raise ValueError(f"the adapter metadata's 'prefix' entry is incomplete ({err}): save it with "
                         "save_adapter from a network that holds the prefix") from err


# ------------------------------------------------------------------------------------------------
# PEFT
# ------------------------------------------------------------------------------------------------
def export_peft_prefix(tensors, meta, base_model_name_or_path=None):
    """``(adapter_config dict, {"prompt_embeddings": float32 [T, L * 2 * token_dim]})`` of a prefix adapter."""
    config = meta["pet_config"]
    prefix = meta.get("prefix")
    if not isinstance(prefix, dict):
        raise ValueError("the adapter metadata has no 'prefix' entry (model shape and rope_theta): save it with "
                         "save_adapter from a network that holds the prefix")
    shape = _shape(prefix)
    t, layers, heads, d, _ = shape
    projection = bool(prefix.get("prefix_projection"))
    table = keys_values_table(tensors, config["pet_type"], projection)
    if table.shape != (t, layers * 2 * heads * d):
        raise ValueError(f"the prefix table is {list(table.shape)}, its metadata says [{t}, {layers * 2 * heads * d}]")
    embeddings = rotate_keys(table, shape, t).astype(np.float32)
    _checks.check_finite_arrays("the prefix", {"prompt_embeddings": embeddings})
    hidden = config.get("projection_dim", config.get("mid_dim")) if projection else heads * d
    peft_config = {
        "peft_type": "PREFIX_TUNING", "task_type": "CAUSAL_LM", "inference_mode": True,
        "num_virtual_tokens": t, "token_dim": heads * d, "num_attention_heads": heads, "num_layers": layers,
        "num_transformer_submodules": 1, "encoder_hidden_size": hidden, "prefix_projection": projection,
        "base_model_name_or_path": base_model_name_or_path, "revision": None,
    }
    return peft_config, {"prompt_embeddings": embeddings}


def _base_theta(config, rope_theta):
    """rope_theta: given, else the local base model's config.json (base_model_name_or_path), else Llama's 10000."""
    if rope_theta is not None:
        return float(_checks.check_number("rope_theta", rope_theta, above=0))
    base = config.get("base_model_name_or_path")
    path = os.path.join(base, "config.json") if isinstance(base, str) else None
    if path and os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            theta = json.load(f).get("rope_theta")
        if _checks.is_number(theta) and theta > 0:
            return float(theta)
    logger.info("import_peft: PREFIX_TUNING keys converted with rope_theta %g (Llama's default; the base model's "
                "config.json was not found)", _DEFAULT_THETA)
    return _DEFAULT_THETA


def read_peft_prefix(peft_dir, config, weights, rope_theta=None):
    """``(tensors, metadata)`` of a PEFT PREFIX_TUNING directory (``config`` its adapter_config dict,
    ``weights`` its safetensors path) as a ptuning2 adapter of the built-in Llama."""
    where = os.path.join(peft_dir, "adapter_config.json")
    for key in ("num_virtual_tokens", "num_layers", "num_attention_heads", "token_dim"):
        _checks.check_positive_int(f"{where} {key}", config.get(key))
    if config.get("num_transformer_submodules", 1) != 1:
        raise ValueError(f"{where}: num_transformer_submodules must be 1 (a decoder-only model), "
                         f"got {config.get('num_transformer_submodules')!r}")
    t, layers, heads, token_dim = (config[k] for k in ("num_virtual_tokens", "num_layers", "num_attention_heads",
                                                      "token_dim"))
    if token_dim % heads:
        raise ValueError(f"{where}: token_dim {token_dim} is not a multiple of num_attention_heads {heads}")
    raw, _ = _files.read_checkpoint(weights)
    if set(raw) != {"prompt_embeddings"}:
        raise ValueError(f"{weights}: a PREFIX_TUNING adapter holds only 'prompt_embeddings', got {sorted(raw)[:5]}")
    table = np.asarray(raw["prompt_embeddings"], np.float64)
    if table.shape != (t, layers * 2 * token_dim):
        raise ValueError(f"{weights}: prompt_embeddings is {list(table.shape)}, the config says "
                         f"[{t}, {layers * 2 * token_dim}]")
    shape = (t, layers, heads, token_dim // heads, _base_theta(config, rope_theta))
    ours = rotate_keys(table, shape, -t).astype(np.float32)
    pet = Ptuning2Config(pre_seq_len=t, prefix_projection=False, dropout_prob=0.0)
    prefix = {"pre_seq_len": t, "num_layers": layers, "num_kv_heads": heads, "head_dim": token_dim // heads,
              "rope_theta": shape[4], "prefix_projection": False}
    meta = {"format_version": 1, "kind": "prefix_adapter", "toolkit": "mindpet_lite", "source": "peft",
            "pet_config": pet.to_dict(), "prefix": prefix, "peft_config": config,
            "converted_from": {"peft_type": "PREFIX_TUNING", "prefix_projection": bool(config.get("prefix_projection"))}}
    return {f"{ENCODER_PATH}.mindpet_delta_ptuning2_embedding.embedding_table": ours}, meta
