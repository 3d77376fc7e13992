"""Hugging Face Llama checkpoints <-> the built-in Llama's checkpoint names, both directions.

The built-in Llama (``models/llama.py``) uses MindFormers' parameter names and Hugging Face's
"rotate_half" rotary layout (cos/sin tables of the half frequencies concatenated with themselves,
``q' = q*cos + rotate_half(q)*sin``). Hugging Face's ``LlamaForCausalLM`` computes rotary embeddings
the same way, so the q/k projection rows need **no permutation**, and both store Linear/Dense weights
as ``[out, in]``: conversion is renaming only (the table is in ``adapters/names.py``).
``tests/adapters/test_interop.py`` proves it numerically: a Hugging Face model built from the converted
weights gives the built-in model's logits (max abs diff ~1e-6 in float32). Meta's original
checkpoints (interleaved rotary pairs) are not Hugging Face checkpoints and are not handled here.
"""
import json
import logging
import os
import re

from mindpet_lite import _checks, _files
from mindpet_lite.adapters.names import HF_SKIP, hf_name_to_mindspore, mindspore_name_to_hf
from mindpet_lite.models import llama_param_shapes

logger = logging.getLogger(__name__)

__all__ = ["hf_to_mindspore", "mindspore_to_hf", "hf_config_to_llama", "llama_config_to_hf"]

# ------------------------------------------------------------------------------------------------
# configs
# ------------------------------------------------------------------------------------------------
_CFG_PAIRS = (("hidden_size", "hidden_size"), ("num_hidden_layers", "num_layers"),
              ("num_attention_heads", "num_heads"), ("num_key_value_heads", "n_kv_heads"),
              ("vocab_size", "vocab_size"), ("intermediate_size", "intermediate_size"),
              ("rms_norm_eps", "rms_norm_eps"), ("rope_theta", "theta"),
              ("max_position_embeddings", "max_position_embedding"),
              ("tie_word_embeddings", "tie_word_embeddings"), ("pad_token_id", "pad_token_id"))


def hf_config_to_llama(hf_config):
    """A Hugging Face Llama ``config.json`` dict -> a built-in ``model_config`` dict
    (``LlamaConfig.from_dict`` reads it). Refuses rope scaling and biases it cannot represent."""
    if not isinstance(hf_config, dict):
        raise TypeError(f"hf_config must be a dict (config.json), got {_checks.describe(hf_config)}")
    model_type = hf_config.get("model_type", "llama")
    if model_type != "llama":
        raise ValueError(f"hf_config: model_type must be 'llama', got {model_type!r}")
    for key in ("attention_bias", "mlp_bias"):
        if hf_config.get(key):
            raise ValueError(f"hf_config: {key}=True is not supported (the built-in Llama has no biases)")
    rope = hf_config.get("rope_scaling") or {}
    rope_type = rope.get("rope_type", rope.get("type")) if isinstance(rope, dict) else None
    if rope_type not in (None, "default"):
        raise ValueError(f"hf_config: rope_scaling {rope!r} is not supported (plain rotary embeddings only)")
    if hf_config.get("hidden_act", "silu") != "silu":
        raise ValueError(f"hf_config: hidden_act must be 'silu', got {hf_config['hidden_act']!r}")
    out = {}
    for hf_key, key in _CFG_PAIRS:
        if hf_config.get(hf_key) is not None:
            out[key] = hf_config[hf_key]
    if "rope_theta" not in hf_config and isinstance(hf_config.get("rope_parameters"), dict):
        theta = hf_config["rope_parameters"].get("rope_theta")
        if theta is not None:
            out["theta"] = theta
    if "max_position_embedding" in out:
        out["seq_length"] = out["max_position_embedding"]
    head_dim = hf_config.get("head_dim")
    if head_dim is not None and head_dim * out.get("num_heads", 1) != out.get("hidden_size"):
        raise ValueError(f"hf_config: head_dim={head_dim} must equal hidden_size / num_attention_heads")
    return out


def llama_config_to_hf(config):
    """A built-in ``LlamaConfig`` (or its dict) -> a Hugging Face ``config.json`` dict."""
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    ffn = getattr(config, "ffn_hidden_size", None) or cfg.get("intermediate_size")
    if ffn is None:
        raise ValueError("config: intermediate_size is needed for a Hugging Face config")
    out = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
           "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32"}
    for hf_key, key in _CFG_PAIRS:
        if cfg.get(key) is not None:
            out[hf_key] = cfg[key]
    out["intermediate_size"] = ffn
    out.setdefault("num_key_value_heads", cfg.get("num_heads"))
    out.setdefault("max_position_embeddings", cfg.get("seq_length"))
    return out


# ------------------------------------------------------------------------------------------------
# checkpoints
# ------------------------------------------------------------------------------------------------
def _hf_files(src):
    """The safetensors files (and config.json dict or None) of a Hugging Face checkpoint."""
    _checks.check_str("src", src)
    if os.path.isfile(src):
        if not src.endswith(".safetensors"):
            raise ValueError(f"src must be a .safetensors file or a Hugging Face model directory, got {src}")
        return [src], None
    if not os.path.isdir(src):
        raise FileNotFoundError(f"src: no such file or directory: {src}")
    config = None
    cfg_path = os.path.join(src, "config.json")
    if os.path.isfile(cfg_path):
        with open(cfg_path, encoding="utf-8") as f:
            config = json.load(f)
    index = os.path.join(src, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
        except (ValueError, KeyError) as err:
            raise ValueError(f"{index}: not a safetensors index (needs a 'weight_map'): {err}") from err
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not os.path.isfile(os.path.join(src, f))]
        if missing:
            raise FileNotFoundError(f"{index} names shard files that are missing: {missing}")
        return [os.path.join(src, f) for f in files], config
    single = os.path.join(src, "model.safetensors")
    if os.path.isfile(single):
        return [single], config
    if any(n.endswith(".bin") for n in os.listdir(src)):
        raise ValueError(f"{src}: only safetensors checkpoints are read (found PyTorch .bin files; "
                         "save them with safe_serialization=True first)")
    raise FileNotFoundError(f"{src}: no model.safetensors or model.safetensors.index.json")


def hf_to_mindspore(src, out=None, format=None, overwrite=False):
    """Convert a Hugging Face Llama checkpoint to the built-in Llama's names.

    Args:
        src: a ``.safetensors`` file, or a directory with ``model.safetensors`` or
            ``model.safetensors.index.json`` and its shards (``config.json`` is checked if present).
        out: ``.ckpt`` or ``.safetensors`` path to write (atomically); None writes nothing.
        format: 'ckpt' or 'safetensors', must agree with the suffix of ``out``.
        overwrite: replace an existing ``out`` (never one of the source files).

    Returns:
        ``{built-in name: numpy array}``; dtypes are kept.

    Raises:
        ValueError: a key with no built-in counterpart (biases, another architecture), a
            duplicated key across shards, a non-Llama config.json.
    """
    if out is not None:
        _files.check_output_path(out, format)
    files, config = _hf_files(src)
    if out is not None:
        _files.check_new_output(out, [src] + files, overwrite)
    if config is not None:
        hf_config_to_llama(config)  # refuses what the built-in Llama cannot compute
    tensors, unknown, skipped = {}, [], []
    for path in files:
        part, _ = _files.read_checkpoint(path)
        for name, array in part.items():
            if HF_SKIP.search(name):
                skipped.append(name)
                continue
            new = hf_name_to_mindspore(name)
            if new is None:
                unknown.append(name)
                continue
            if new in tensors:
                raise ValueError(f"{src}: {name} appears in more than one shard")
            tensors[new] = array
    if unknown:
        raise ValueError(f"{src}: {len(unknown)} keys have no built-in Llama counterpart (not a Hugging Face "
                         f"Llama checkpoint?): {unknown[:8]}")
    if not tensors:
        raise ValueError(f"{src}: no Llama weights found")
    if skipped:
        logger.info("hf_to_mindspore: skipped %d rotary buffers", len(skipped))
    if out is not None:
        _files.write_checkpoint(tensors, out, format=format)
        logger.info("hf_to_mindspore: %d tensors from %s -> %s", len(tensors), src, out)
    return tensors


def mindspore_to_hf(src, out_dir=None, config=None, max_shard_size=None, overwrite=False):
    """Convert a built-in Llama checkpoint to Hugging Face names and write a model directory.

    Args:
        src: a ``.ckpt`` / ``.safetensors`` file or a ``{name: array}`` dict with built-in names.
            Keys that are not Llama weights (optimizer states, ``epoch_num``, LoRA weights) are an
            error: merge or strip them first.
        out_dir: the directory to write ``model.safetensors`` (with ``{"format": "pt"}`` metadata, as
            transformers expects) or, above ``max_shard_size`` bytes, ``model-0000i-of-0000n.safetensors``
            plus ``model.safetensors.index.json``; None writes nothing.
        config: a ``LlamaConfig`` or model_config dict: also writes ``config.json``; the weights must
            have exactly the shapes it describes.
        max_shard_size: int bytes per shard, or None for one file.
        overwrite: replace the Hugging Face files already in ``out_dir`` (never the source).

    Returns:
        ``{Hugging Face name: numpy array}``.
    """
    if out_dir is not None:
        _checks.check_str("out_dir", out_dir)
        if os.path.isfile(out_dir):
            raise NotADirectoryError(f"out_dir must be a directory (Hugging Face model dir), got a file: {out_dir}")
    if max_shard_size is not None:
        _checks.check_positive_int("max_shard_size", max_shard_size)
    if out_dir is not None:
        _check_hf_outputs(out_dir, src, overwrite)
    hf_config = llama_config_to_hf(config) if config is not None else None
    tensors = _files.read_checkpoint(src)[0] if isinstance(src, str) else _files.to_numpy_dict(src, "src")
    if config is not None:
        _check_shapes(tensors, config)
    out, unknown = {}, []
    for name, array in tensors.items():
        new = mindspore_name_to_hf(name)
        if new is None:
            unknown.append(name)
        else:
            out[new] = array
    if unknown:
        raise ValueError(f"src: {len(unknown)} keys are not built-in Llama weights: {unknown[:8]} "
                         "(merge LoRA weights and drop optimizer states first)")
    if not out:
        raise ValueError("src: no Llama weights found")
    if hf_config is not None:
        dtypes = {str(a.dtype) for a in out.values()} & {"float32", "float16", "bfloat16"}
        if len(dtypes) == 1:
            hf_config["torch_dtype"] = dtypes.pop()
    if out_dir is not None:
        _write_hf_dir(out, out_dir, hf_config, max_shard_size)
    return out


_HF_OUTPUTS = re.compile(r"^(model(-\d{5}-of-\d{5})?\.safetensors|model\.safetensors\.index\.json|config\.json)$")


def _check_hf_outputs(out_dir, src, overwrite):
    """The files a conversion would write into ``out_dir`` follow the overwrite rule of ``_files``."""
    existing = [n for n in os.listdir(out_dir) if _HF_OUTPUTS.match(n)] if os.path.isdir(out_dir) else []
    for name in existing + ["model.safetensors"]:
        _files.check_new_output(os.path.join(out_dir, name), [src], overwrite=True, what="out_dir file")
    if existing and not overwrite:
        raise FileExistsError(f"out_dir {out_dir} already holds {_checks.short_list(existing)}; pass --overwrite "
                              "(API: overwrite=True) to replace them")


def _check_shapes(tensors, config):
    """The weights are those of the model ``config`` describes (names and shapes)."""
    expected = llama_param_shapes(config)
    missing = sorted(set(expected) - set(tensors))
    differ = [f"{n}: {list(tensors[n].shape)} vs {list(s)}" for n, s in expected.items()
              if n in tensors and tuple(tensors[n].shape) != tuple(s)]
    if missing or differ:
        detail = "; ".join(([f"missing {_checks.short_list(missing, 4)}"] if missing else []) + differ[:4])
        raise ValueError(f"model_config does not describe these weights ({detail}); check hidden_size, "
                         "num_layers, num_heads, n_kv_heads, intermediate_size, vocab_size")


def _write_hf_dir(tensors, out_dir, hf_config, max_shard_size):
    os.makedirs(out_dir, exist_ok=True)
    names = list(tensors)
    shards, current, size = [], [], 0
    for name in names:
        nbytes = tensors[name].nbytes
        if current and max_shard_size is not None and size + nbytes > max_shard_size:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += nbytes
    shards.append(current)
    st_meta = {"format": "pt"}
    if len(shards) == 1:
        _files.write_checkpoint(tensors, os.path.join(out_dir, "model.safetensors"), "safetensors", text=st_meta)
    else:
        weight_map = {}
        total = len(shards)
        for i, shard in enumerate(shards, 1):
            fname = f"model-{i:05d}-of-{total:05d}.safetensors"
            _files.write_checkpoint({n: tensors[n] for n in shard}, os.path.join(out_dir, fname), "safetensors",
                                    text=st_meta)
            weight_map.update({n: fname for n in shard})
        index = {"metadata": {"total_size": int(sum(t.nbytes for t in tensors.values()))},
                 "weight_map": weight_map}
        _files.write_json(os.path.join(out_dir, "model.safetensors.index.json"), index)
    if hf_config is not None:
        _files.write_json(os.path.join(out_dir, "config.json"), hf_config)
    logger.info("mindspore_to_hf: %d tensors -> %s (%d file(s))", len(tensors), out_dir, len(shards))
