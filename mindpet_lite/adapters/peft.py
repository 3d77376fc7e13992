"""Exchange adapters with Hugging Face PEFT (``peft.PeftModel.from_pretrained`` on a ``LlamaForCausalLM``).

A PEFT LoRA directory holds ``adapter_config.json`` and ``adapter_model.safetensors`` with keys
``base_model.model.<HF module>.lora_A.weight`` ([r, in]) and ``.lora_B.weight`` ([out, r]): the same
orientation as ``mindpet_delta_lora_a`` / ``_b``, so weights are copied as they are and only the module
paths are renamed (``attention.wq`` <-> ``self_attn.q_proj``, ``feed_forward.w1`` <-> ``mlp.gate_proj``,
``w2`` <-> ``down_proj``, ``w3`` <-> ``up_proj``, ...; see ``names.py``). PEFT computes
``W x + (alpha / r) B A x`` (``alpha / sqrt(r)`` with ``use_rslora``), as LoRADense does.

Parameters the adapter left fully trainable (``freeze_exclude``) are exported as PEFT
``modules_to_save`` (``base_model.model.<HF name>``) and imported back.

Per-layer ranks / alphas travel as PEFT's ``rank_pattern`` / ``alpha_pattern``: on export one key per
layer that differs from r / lora_alpha, its HF module path (``model.layers.0.self_attn.q_proj``); on import
PEFT's keys are resolved with PEFT's rule against each HF module and written back as our module paths.
``layers_to_transform`` is written (the adapted layer indices) when target_modules is a list of names, as
PEFT requires; ``modules_to_save`` are the full tensors (``base_model.model.<HF name>``, as PEFT saves
them). ``loraplus_lr_ratio`` trains only: not a PEFT LoraConfig key, not written (logged).

DoRA: the magnitude ``<layer>.mindpet_delta_lora_magnitude`` is PEFT's
``base_model.model.<HF module>.lora_magnitude_vector`` (PEFT's state-dict key has no ``.weight``), with
``use_dora: true`` in the config. Adapters are always exported with ``init_lora_weights: true``: a
PiSSA / OLoRA adapter was already saved as plain LoRA of the original base (``adapters.mutated_init``);
a PEFT adapter whose config still says pissa / olora / corda / loftq is relative to a changed base
and is refused on import (save it with PEFT's ``path_initial_model_for_weight_conversion``).

MindFormers mcore adapters (``model.decoder.layers.N.self_attention.linear_qkv``, ``mlp.linear_fc1``, ...;
``names.py`` has the table) export to Hugging Face Qwen3 / Llama module names: a fused ``linear_qkv``
pair becomes q_proj / k_proj / v_proj, each with the shared A and its rows of B under the model's fused
layout (``adapters/mcore.py``: MindFormers' interleaved-per-group default or contiguous), ``linear_fc1``
becomes gate_proj / up_proj likewise; the layout comes from the adapter's ``mcore_layout`` metadata or
the model config given (``--model-config``: a HF config.json, a MindFormers model_config or run YAML).

Import refuses what a LoRADense cannot hold: LoRA biases, embedding LoRA, ``fan_in_fan_out``, and other
PEFT types.
"""
import json
import logging
import os
import re

import numpy as np

from mindpet_lite import _checks, _files
from mindpet_lite.adapters import metadata as _meta
from mindpet_lite.adapters import names, prefix
from mindpet_lite.adapters import peft_mcore as _peft_mcore
from mindpet_lite.delta.lora import LORA_A, LORA_B, LORA_MAGNITUDE
from mindpet_lite.pet import variants
from mindpet_lite.pet.config import LoraConfig

logger = logging.getLogger(__name__)

__all__ = ["export_peft", "import_peft", "read_peft_adapter"]

CONFIG_NAME = "adapter_config.json"
_MUTATING_INITS = ("pissa", "olora", "corda", "loftq")  # PEFT starts that change the base weights
WEIGHTS_NAME = "adapter_model.safetensors"
_PREFIX = names.PEFT_PREFIX

# adapter_config.json keys whose non-default value changes the math in a way we cannot represent
_REFUSED = {
    "lora_bias": (False, None),
    "fan_in_fan_out": (False, None),
    "use_qalora": (False, None),
    "layer_replication": (None,),
    "target_parameters": (None, []),
    "trainable_token_indices": (None,),
    "alora_invocation_tokens": (None,),
    "megatron_config": (None,),
    "use_bdlora": (None, False),
}


def _hf_module(module):
    """HF module path of one of ours; None if not Llama."""
    return names.map_suffix(module, names.mindspore_module_to_hf)


def _hf_param(name):
    return names.map_suffix(name, names.mindspore_name_to_hf)


def _target_modules(hf_modules, lora_config):
    """PEFT target_modules: the leaf names when every adapted layer has the same set, else an exact regex."""
    per_layer, others = {}, set()
    for path in hf_modules:
        match = names.LAYER_RE.match(path)
        if match:
            per_layer.setdefault(match.group(1), set()).add(match.group(2).rsplit(".", 1)[-1])
        else:
            others.add(path)
    leaf_sets = {frozenset(s) for s in per_layer.values()}
    uniform = len(leaf_sets) <= 1 and not (lora_config is not None and lora_config.exclude_layers)
    if uniform and all(p == "lm_head" for p in others):
        leaves = set().union(*leaf_sets) if leaf_sets else set()
        return sorted(leaves | others)
    return "^(?:" + "|".join(re.escape(p) for p in sorted(hf_modules)) + ")$"


# methods of this toolkit that HF PEFT has no tuner for: export refuses them, saying why
NO_PEFT_METHOD = {
    "adapter": "HF PEFT has no Adapter (Houlsby bottleneck) tuner",
    "low_rank_adapter": "HF PEFT has no LowRankAdapter (Compacter) tuner",
}


def _refuse_non_peft(meta):
    pet_type = _meta.pet_type_of(meta)
    if pet_type in NO_PEFT_METHOD:
        raise ValueError(f"export_peft: the adapter is pet_type {pet_type!r} and {NO_PEFT_METHOD[pet_type]}: there is "
                         "nothing to convert it to; use the mindpet_lite adapter file (get_pet_model with its "
                         "pet_config, then load_adapter)")


def export_peft(adapter, out_dir, base_model_name_or_path=None, lora_alpha=None, use_rslora=None, overwrite=False,  # pylint: disable=too-many-arguments
                model_config=None):
    """Write a Hugging Face PEFT LoRA directory from an adapter.

    Args:
        adapter: an adapter file (or a ``(tensors, metadata)`` pair) holding built-in Llama names.
        out_dir: the directory to write ``adapter_config.json`` and ``adapter_model.safetensors`` to
            (created; existing files of those names are replaced, atomically, only with ``overwrite``).
        base_model_name_or_path: recorded in the config (None: pass the base model to PeftModel yourself).
        lora_alpha, use_rslora: for adapters without metadata (MindFormers files); an adapter with
            metadata keeps its own, and a different value is an error.
        model_config: for an mcore adapter, the model config that tells the fused layouts (a dict: HF
            config.json, MindFormers model_config, a run YAML; see ``mcore.layout_from_config``); None:
            the adapter's ``mcore_layout`` metadata (MindFormers' default layouts when it has none).

    Returns:
        The adapter_config dict written.

    Raises:
        ValueError: a LoRA module that is not a Llama projection, ranks that differ per module, an
            unknown alpha, an mcore fused layer whose rows do not fit the model config; ``out_dir`` a file.
    """
    _checks.check_str("out_dir", out_dir)
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise NotADirectoryError(f"out_dir must be a directory, got a file: {out_dir}")
    source = [adapter] if isinstance(adapter, str) else []
    _files.check_new_output(os.path.join(out_dir, WEIGHTS_NAME), source, overwrite, what="out_dir file")
    _files.check_new_output(os.path.join(out_dir, CONFIG_NAME), source, overwrite, what="out_dir file")
    if isinstance(adapter, str):
        tensors, meta = _meta.read_adapter_file(adapter)
    elif isinstance(adapter, tuple) and len(adapter) == 2:
        tensors, meta = _files.to_numpy_dict(adapter[0], "adapter"), dict(adapter[1] or {})
    else:
        raise TypeError(f"adapter must be a file path or a (tensors, metadata) pair, got {_checks.describe(adapter)}")
    _refuse_non_peft(meta)
    if prefix.is_prefix_config(_meta.pet_config_of(meta)):
        if lora_alpha is not None or use_rslora is not None:
            raise ValueError("lora_alpha / use_rslora apply to LoRA adapters; this is a prefix adapter")
        config, out = prefix.export_peft_prefix(tensors, meta, base_model_name_or_path)
        _write_peft_dir(out_dir, out, config)
        logger.info("export_peft: PREFIX_TUNING, %d virtual tokens -> %s", config["num_virtual_tokens"], out_dir)
        return config
    lora_config = _meta.lora_config(meta)  # None for files without metadata (MindFormers)
    _check_override(lora_config, lora_alpha, use_rslora)
    if not _meta.is_ours(meta):  # a MindFormers checkpoint also holds base weights and optimizer states
        dropped = [k for k in tensors if not names.is_lora_name(k)]
        tensors = {k: v for k, v in tensors.items() if names.is_lora_name(k)}
        if dropped:
            logger.info("export_peft: ignoring %d non-LoRA entries of a file without mindpet_lite metadata (base "
                        "weights, optimizer states)", len(dropped))
    _checks.check_finite_arrays("the adapter", tensors)
    magnitudes, rest = names.split_magnitudes(tensors)
    pairs, extras = names.split_lora_pairs(rest)
    if not pairs:
        raise ValueError("the adapter holds no LoRA pairs to export")
    use_dora = _check_dora(lora_config, magnitudes, pairs)
    rank = _check_ranks(pairs, lora_config)
    alpha = lora_alpha if lora_alpha is not None else getattr(lora_config, "lora_alpha", None)
    if alpha is None:
        raise ValueError("the adapter carries no lora_alpha (no metadata): pass lora_alpha= "
                         "(and use_rslora=) to export it")
    _checks.check_lora_alpha("lora_alpha", alpha)
    if use_rslora is None:
        rslora = lora_config.use_rslora if lora_config is not None else False
    else:
        rslora = _checks.check_bool("use_rslora", use_rslora)

    layout = _peft_mcore.fused_layout(pairs, extras, meta, model_config)
    out, unknown, hf_modules, rank_pattern, alpha_pattern = {}, [], [], {}, {}
    for module, (a, b) in sorted(pairs.items()):
        parts = _peft_mcore.hf_parts(module, b.shape[0], layout)
        if parts is None:
            unknown.append(module)
            continue
        for hf, rows in parts:
            hf_modules.append(hf)
            if a.shape[0] != rank:  # per-layer values as PEFT keys: the HF module path (PEFT's suffix rule)
                rank_pattern[hf] = int(a.shape[0])
            if lora_config is not None and lora_config.alpha_for(module) != alpha:
                alpha_pattern[hf] = lora_config.alpha_for(module)
            out[f"{_PREFIX}{hf}.lora_A.weight"] = a
            out[f"{_PREFIX}{hf}.lora_B.weight"] = b[rows]
            if module in magnitudes:
                out[f"{_PREFIX}{hf}.lora_magnitude_vector"] = magnitudes[module][rows]
    to_save = []
    for name, array in sorted(extras.items()):
        module, _, leaf = name.rpartition(".")
        parts = (_peft_mcore.hf_parts(module, array.shape[0] if array.ndim else 0, layout)
                 if layout is not None else None)
        if parts is None:
            hf = _hf_param(name)
            if hf is None:
                unknown.append(name)
                continue
            parts = [(hf.rsplit(".", 1)[0], slice(None))]
            leaf = hf.rsplit(".", 1)[1]
        for hf_module, rows in parts:
            out[f"{_PREFIX}{hf_module}.{leaf}"] = array[rows]
            to_save.append(hf_module)
    if unknown:
        raise ValueError(f"{len(unknown)} adapter entries have no Hugging Face Llama counterpart: "
                         f"{_checks.short_list(unknown)}")
    dropout = lora_config.lora_dropout if lora_config is not None else 0.0
    targets = _target_modules(hf_modules, lora_config)
    layers = None  # PEFT allows layers_to_transform with a list of target names only
    if getattr(lora_config, "layers_to_transform", None) is not None and isinstance(targets, list):
        layers = sorted({int(m.group(1)) for m in map(names.LAYER_RE.match, hf_modules) if m})
    if getattr(lora_config, "loraplus_lr_ratio", None) is not None:
        logger.info("export_peft: loraplus_lr_ratio=%g is a training setting, not a PEFT LoraConfig key: not "
                    "written (PEFT trains LoRA+ with peft.optimizers.create_loraplus_optimizer)",
                    lora_config.loraplus_lr_ratio)
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": int(rank), "lora_alpha": alpha,
        "use_rslora": rslora, "target_modules": targets, "lora_dropout": dropout,
        "bias": "none", "base_model_name_or_path": base_model_name_or_path, "fan_in_fan_out": False,
        "modules_to_save": to_save or None, "init_lora_weights": True, "inference_mode": True,
        "rank_pattern": rank_pattern, "alpha_pattern": alpha_pattern, "use_dora": use_dora,
        "layers_to_transform": layers, "layers_pattern": None, "revision": None,
    }
    _write_peft_dir(out_dir, out, config)
    logger.info("export_peft: %d LoRA pairs (+%d modules_to_save) -> %s", len(hf_modules), len(to_save), out_dir)
    return config


def _write_peft_dir(out_dir, tensors, config):
    os.makedirs(out_dir, exist_ok=True)
    _files.write_checkpoint(tensors, os.path.join(out_dir, WEIGHTS_NAME), "safetensors", text={"format": "pt"})
    _files.write_json(os.path.join(out_dir, CONFIG_NAME), config)


def _check_ranks(pairs, lora_config):
    """PEFT's r: the config's lora_rank, each pair's rank checked against its rank_pattern; without a
    config, the one rank all pairs share."""
    if lora_config is None:
        ranks = {a.shape[0] for a, _ in pairs.values()}
        if len(ranks) != 1:
            raise ValueError(f"the LoRA pairs have different ranks {sorted(ranks)} and the adapter has no metadata "
                             "(no lora_rank / rank_pattern) to say which is which")
        return int(ranks.pop())
    for module, (a, _) in pairs.items():
        if a.shape[0] != lora_config.rank_for(module):
            raise ValueError(f"the adapter's metadata gives {module} lora_rank={lora_config.rank_for(module)} "
                             f"(lora_rank, rank_pattern) but its weights have rank {a.shape[0]}")
    return lora_config.lora_rank


def _check_dora(lora_config, magnitudes, pairs):
    """True when the adapter is DoRA: a magnitude for every pair (and its metadata agrees)."""
    recorded = lora_config.use_dora if lora_config is not None else bool(magnitudes)
    if recorded != bool(magnitudes) or (magnitudes and set(magnitudes) != set(pairs)):
        raise ValueError(f"the adapter's metadata says use_dora={recorded} but it holds DoRA magnitudes for "
                         f"{len(set(magnitudes) & set(pairs))} of its {len(pairs)} LoRA pairs")
    return bool(magnitudes)


def _check_override(lora_config, lora_alpha, use_rslora):
    """lora_alpha / use_rslora given for an adapter that records its own must agree with it: the
    exported scaling would otherwise differ from the one it was trained with."""
    if lora_config is None:
        return
    for key, given, own in (("lora_alpha", lora_alpha, lora_config.lora_alpha),
                            ("use_rslora", use_rslora, lora_config.use_rslora)):
        if given is not None and given != own:
            raise ValueError(f"{key}={given!r} differs from the adapter's own {key}={own!r} (its metadata): "
                             f"the exported scaling would not be the trained one; leave {key} out")


def _read_json(peft_dir):
    path = os.path.join(peft_dir, CONFIG_NAME)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{peft_dir}: no {CONFIG_NAME} (not a PEFT adapter directory)")
    try:
        with open(path, encoding="utf-8") as f:
            config = json.load(f)
    except ValueError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(config, dict):
        raise ValueError(f"{path} must hold a JSON object")
    if config.get("peft_type") not in ("LORA", "PREFIX_TUNING"):
        raise ValueError(f"{path}: peft_type must be 'LORA' or 'PREFIX_TUNING', got {config.get('peft_type')!r}")
    return config


def _read_config(peft_dir):
    """The checked adapter_config.json of a PEFT LoRA directory."""
    path = os.path.join(peft_dir, CONFIG_NAME)
    config = _read_json(peft_dir)
    for key, allowed in _REFUSED.items():
        if key in config and config[key] not in allowed:
            raise ValueError(f"{path}: {key}={config[key]!r} is not supported (a LoRADense holds plain LoRA with "
                             "its own rank and alpha per layer; DoRA, LoRA biases and the like cannot be "
                             "represented)")
    init = config.get("init_lora_weights", True)
    if isinstance(init, str) and init.lower().startswith(_MUTATING_INITS):
        raise ValueError(f"{path}: init_lora_weights={init!r}: the adapter is relative to a base that keeps the "
                         "residual of its start, not to the original base; save it with PEFT's "
                         "path_initial_model_for_weight_conversion (a plain LoRA of rank 2r) and import that")
    if config.get("bias", "none") != "none":
        raise ValueError(f"{path}: bias={config['bias']!r} is not supported (only 'none')")
    for key in ("r", "lora_alpha"):
        if key not in config:
            raise ValueError(f"{path}: missing required key {key!r}")
    _checks.check_positive_int(f"{CONFIG_NAME} r", config["r"])
    _checks.check_lora_alpha(f"{CONFIG_NAME} lora_alpha", config["lora_alpha"])
    return config


def read_peft_adapter(peft_dir):
    """Read a PEFT LoRA directory as an adapter with built-in Llama names.

    Returns:
        ``(tensors, metadata)`` as :func:`read_adapter` gives them; the metadata's pet_config carries
        r, lora_alpha, use_rslora, lora_dropout and the target modules; ``peft_config`` the original.
    """
    _checks.check_str("peft_dir", peft_dir)
    if not os.path.isdir(peft_dir):
        raise NotADirectoryError(f"peft_dir must be a PEFT adapter directory, got {peft_dir}")
    config = _read_json(peft_dir)
    weights = os.path.join(peft_dir, WEIGHTS_NAME)
    if config["peft_type"] == "PREFIX_TUNING" and os.path.isfile(weights):
        return prefix.read_peft_prefix(peft_dir, config, weights)
    config = _read_config(peft_dir)
    if not os.path.isfile(weights):
        if os.path.isfile(os.path.join(peft_dir, "adapter_model.bin")):
            raise ValueError(f"{peft_dir}: only {WEIGHTS_NAME} is read (found adapter_model.bin; save with "
                             "safe_serialization=True)")
        raise FileNotFoundError(f"{peft_dir}: no {WEIGHTS_NAME}")
    raw, _ = _files.read_checkpoint(weights)
    tensors, unknown, leaves, saved = {}, [], set(), []
    rank = config["r"]
    rank_pattern, alpha_pattern = _read_pattern(config, "rank_pattern"), _read_pattern(config, "alpha_pattern")
    our_ranks, our_alphas = {}, {}  # per-module values, keyed by our module path
    for key, array in raw.items():
        if "lora_embedding" in key or key.endswith(".lora_A.bias") or key.endswith(".lora_B.bias"):
            raise ValueError(f"{weights}: {key} is an embedding LoRA / LoRA-bias weight, which a LoRADense "
                             "cannot hold")
        name = key[len(_PREFIX):] if key.startswith(_PREFIX) else key
        dora = re.match(r"^(.+)\.lora_magnitude_vector(?:\.[^.]+)?(?:\.weight)?$", name)
        if dora:
            module = names.hf_module_to_mindspore(dora.group(1))
            if module is None or array.ndim != 1 or not config.get("use_dora"):
                raise ValueError(f"{weights}: {key} (shape {list(array.shape)}) is not a DoRA magnitude of a Llama "
                                 f"projection in an adapter with use_dora=true")
            tensors[f"{module}.{LORA_MAGNITUDE}"] = array
            continue
        match = re.match(r"^(.+)\.lora_([AB])(?:\.[^.]+)?\.weight$", name)
        if match:
            module = names.hf_module_to_mindspore(match.group(1))
            if module is None:
                unknown.append(key)
                continue
            which = LORA_A if match.group(2) == "A" else LORA_B
            r = array.shape[0] if which == LORA_A else array.shape[-1]
            want = _pattern_value(rank_pattern, match.group(1), rank)  # PEFT's rank for this module
            if array.ndim != 2 or r != want:
                via = " of its rank_pattern" if want != rank else ""
                raise ValueError(f"{weights}: {key} has shape {list(array.shape)}, not rank r={want}{via} of "
                                 f"{CONFIG_NAME}")
            tensors[f"{module}.{which}"] = array
            leaves.add(module.rsplit(".", 1)[-1])
            if want != rank:
                our_ranks[module] = want
            if _pattern_value(alpha_pattern, match.group(1), config["lora_alpha"]) != config["lora_alpha"]:
                our_alphas[module] = _pattern_value(alpha_pattern, match.group(1), config["lora_alpha"])
        else:
            ours = names.hf_name_to_mindspore(name.replace(".modules_to_save.default.", "."))
            if ours is None:
                unknown.append(key)
                continue
            tensors[ours] = array
            saved.append(ours.rsplit(".", 1)[0])
    if unknown:
        raise ValueError(f"{weights}: {len(unknown)} keys have no built-in Llama counterpart: {_checks.short_list(unknown)}")
    if not any(k.endswith(LORA_A) for k in tensors):
        raise ValueError(f"{weights} holds no LoRA weights")
    magnitudes, rest = names.split_magnitudes(tensors)
    _check_dora(None, magnitudes, names.split_lora_pairs(rest)[0])  # every A has its B (and its magnitude)
    if bool(config.get("use_dora")) != bool(magnitudes):
        raise ValueError(f"{weights}: {CONFIG_NAME} says use_dora={config.get('use_dora')!r} but the weights hold "
                         f"{len(magnitudes)} lora_magnitude_vector entries")
    _checks.check_finite_arrays(weights, tensors)
    lora_config = LoraConfig(lora_rank=int(rank), lora_alpha=config["lora_alpha"],
                             lora_dropout=float(config.get("lora_dropout") or 0.0),
                             use_rslora=bool(config.get("use_rslora", False)), use_dora=bool(magnitudes),
                             target_modules="|".join(f".*{leaf}" for leaf in sorted(leaves)),
                             rank_pattern=our_ranks, alpha_pattern=our_alphas,
                             layers_to_transform=config.get("layers_to_transform"),
                             layers_pattern=config.get("layers_pattern"), modules_to_save=sorted(saved) or None)
    meta = _meta.build_metadata(lora_config, None, source="peft",
                                peft_config={k: v for k, v in config.items() if _jsonable(v)})
    return tensors, meta


def _read_pattern(config, key):
    """PEFT's ``{regex over HF module paths: value}`` of adapter_config.json, checked."""
    try:
        return variants.check_pattern_map(f"{CONFIG_NAME} {key}", config.get(key),
                                          "rank" if key == "rank_pattern" else "alpha")
    except TypeError as err:
        raise ValueError(str(err)) from err


def _pattern_value(patterns, hf_module, default):
    """PEFT's value for one HF module: the first key matching it (``get_pattern_key``), else the default."""
    key = variants.pattern_key(patterns, hf_module)
    return patterns[key] if key is not None else default


def _jsonable(value):
    try:
        json.dumps(value)
        return True
    except (TypeError, ValueError):
        return False


def import_peft(peft_dir, out=None, format=None, overwrite=False, target="llama", model_config=None):  # pylint: disable=redefined-builtin,too-many-arguments
    """Convert a PEFT LoRA directory to an adapter file (``out``, .ckpt / .safetensors) that
    :func:`load_adapter` puts on the built-in Llama (``target='llama'``) or on a MindFormers mcore model
    (``target='mcore'``, with ``model_config``: its fused layout; see ``peft_mcore.to_mcore``). Returns
    ``(tensors, metadata)``. ``out`` is never inside ``peft_dir``; an existing ``out`` needs ``overwrite=True``."""
    _checks.check_choice("target", target, ("llama", "mcore"))
    if target == "llama" and model_config is not None:
        raise ValueError("model_config is for target='mcore' (the fused layout of the mcore model)")
    if out is not None:
        _files.check_output_path(out, format)
        _files.check_new_output(out, [peft_dir], overwrite)
    tensors, meta = read_peft_adapter(peft_dir)
    if target == "mcore":
        tensors, meta = _peft_mcore.to_mcore(tensors, meta, model_config)
    if out is not None:
        _meta.write_adapter_file({k: np.asarray(v) for k, v in tensors.items()}, out, meta, format)
        logger.info("import_peft: %s -> %s (%d tensors)", peft_dir, out, len(tensors))
    return tensors, meta
