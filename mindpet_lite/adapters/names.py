"""Every parameter-name translation in one place: ours, MindFormers', mcore's, Hugging Face's, PEFT's.

* Ours (and MindFormers'): ``<layer path>.mindpet_delta_lora_a`` / ``_b`` beside the layer's
  ``weight``; the built-in Llama uses MindFormers' module names (``attention.wq``, ``feed_forward.w1``).
* mcore / PEFT LoRA names: ``X.lora_A.weight``, ``X.lora_A.default.weight``; PEFT files prefix every
  name with ``base_model.model.``.
* Hugging Face Llama <-> the built-in Llama (renaming only: both store ``[out, in]`` and use the
  "rotate_half" rotary layout)::

    model.embed_tokens.weight                      <-> model.tok_embeddings.embedding_weight
    model.layers.N.self_attn.{q,k,v,o}_proj.weight <-> model.layers.N.attention.w{q,k,v,o}.weight
    model.layers.N.mlp.gate_proj.weight            <-> model.layers.N.feed_forward.w1.weight
    model.layers.N.mlp.down_proj.weight            <-> model.layers.N.feed_forward.w2.weight
    model.layers.N.mlp.up_proj.weight              <-> model.layers.N.feed_forward.w3.weight
    model.layers.N.input_layernorm.weight          <-> model.layers.N.attention_norm.weight
    model.layers.N.post_attention_layernorm.weight <-> model.layers.N.ffn_norm.weight
    model.norm.weight                              <-> model.norm_out.weight
    lm_head.weight                                 <-> lm_head.weight

* MindFormers mcore models (Qwen3, the mcore GPT / Llama, ...: ``model.decoder.layers.N...``) <->
  Hugging Face Qwen3 / Llama (the fused projections' row layouts are ``adapters/mcore.py``'s)::

    model.embedding.word_embeddings.weight                 <-> model.embed_tokens.weight
    model.decoder.layers.N.self_attention.linear_qkv       <-> model.layers.N.self_attn.{q,k,v}_proj (fused rows)
    model.decoder.layers.N.self_attention.linear_proj      <-> model.layers.N.self_attn.o_proj
    model.decoder.layers.N.self_attention.{q,k}_layernorm  <-> model.layers.N.self_attn.{q,k}_norm
    model.decoder.layers.N.mlp.linear_fc1                  <-> model.layers.N.mlp.{gate,up}_proj (fused rows)
    model.decoder.layers.N.mlp.linear_fc2                  <-> model.layers.N.mlp.down_proj
    model.decoder.layers.N.input_layernorm                 <-> model.layers.N.input_layernorm
    model.decoder.layers.N.pre_mlp_layernorm               <-> model.layers.N.post_attention_layernorm
    model.decoder.final_layernorm                          <-> model.norm
    model.output_layer                                     <-> lm_head

  MindFormers' own mcore LoRA layers (``ColumnParallelLinearWithLoRA`` / ``RowParallelLinearWithLoRA``)
  hold ``X.lora_A.weight`` / ``X.lora_B.weight`` (sub-cells ``lora_A`` / ``lora_B``), read as ours above.
* Tensor-parallel split of each projection (Megatron's): column-parallel layers (``linear_qkv``,
  ``linear_fc1``; the built-in Llama's ``wq/wk/wv/w1/w3``) split W and LoRA B by output rows and keep A
  whole; row-parallel layers (``linear_proj``, ``linear_fc2``; ``wo``, ``w2``) split W and A by input
  columns and keep B whole (:func:`parallel_kind`).
* Training state that MindSpore / MindFormers write beside the weights (optimizer moments, step
  counters, loss scale): never model or adapter weights.
"""
import re

from mindpet_lite.delta.lora import LORA_A, LORA_B, LORA_MAGNITUDE

LORA_MARK = "mindpet_delta_lora_"
PEFT_PREFIX = "base_model.model."
LAYER_RE = re.compile(r"^model\.layers\.(\d+)\.(.+)$")

TRAINING_STATE_PREFIXES = ("adam_m.", "adam_v.", "moment1.", "moment2.", "moments.", "accu_grads.",
                           "accumulate_grads.", "exp_avg.", "exp_avg_sq.", "_accu_grads.", "global_step",
                           "learning_rate", "scale_sense", "loss_scale", "epoch_num", "step_num",
                           "current_iterator_step", "last_overflow_iterator_step")

# mcore / PEFT LoRA names -> ours
_FOREIGN_LORA = ((re.compile(r"\.lora_[Aa](?:\.default)?\.weight$"), "." + LORA_A),
                 (re.compile(r"\.lora_[Bb](?:\.default)?\.weight$"), "." + LORA_B),
                 # DoRA: PEFT's state-dict key has no ".weight"; its module attribute does
                 (re.compile(r"\.lora_magnitude_vector(?:\.default)?(?:\.weight)?$"), "." + LORA_MAGNITUDE))

# module paths inside model.layers.N: (Hugging Face, built-in)
_LAYER_MODULES = (
    ("self_attn.q_proj", "attention.wq"),
    ("self_attn.k_proj", "attention.wk"),
    ("self_attn.v_proj", "attention.wv"),
    ("self_attn.o_proj", "attention.wo"),
    ("mlp.gate_proj", "feed_forward.w1"),
    ("mlp.down_proj", "feed_forward.w2"),
    ("mlp.up_proj", "feed_forward.w3"),
    ("input_layernorm", "attention_norm"),
    ("post_attention_layernorm", "ffn_norm"),
)
_TOP_MODULES = (("model.embed_tokens", "model.tok_embeddings"), ("model.norm", "model.norm_out"),
                ("lm_head", "lm_head"))
# parameter leaf names that differ: (hf module, built-in module) -> (hf leaf, built-in leaf)
_LEAF = {("model.embed_tokens", "model.tok_embeddings"): ("weight", "embedding_weight")}
# Hugging Face buffers that some checkpoints carry and the built-in model computes itself
HF_SKIP = re.compile(r"(^|\.)rotary_emb\.inv_freq$")

# mcore module paths inside decoder.layers.N: (mcore, Hugging Face modules in fused-row order)
_MCORE_LAYER_MODULES = (
    ("self_attention.linear_qkv", ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj")),
    ("self_attention.linear_proj", ("self_attn.o_proj",)),
    ("self_attention.q_layernorm", ("self_attn.q_norm",)),
    ("self_attention.k_layernorm", ("self_attn.k_norm",)),
    ("mlp.linear_fc1", ("mlp.gate_proj", "mlp.up_proj")),
    ("mlp.linear_fc2", ("mlp.down_proj",)),
    ("input_layernorm", ("input_layernorm",)),
    ("pre_mlp_layernorm", ("post_attention_layernorm",)),
)
_MCORE_TOP_MODULES = (("embedding.word_embeddings", "model.embed_tokens"), ("decoder.final_layernorm", "model.norm"),
                      ("output_layer", "lm_head"))
MCORE_RE = re.compile(r"^(?P<prefix>(?:.+\.)?)(?P<path>decoder\.layers\.(?P<n>\d+)\.(?P<rest>.+)|"
                      r"embedding\.word_embeddings|decoder\.final_layernorm|output_layer)$")
MCORE_PREFIX = "model."  # TrainingQwen3ForCausalLM (and the other mcore models) hold the GPTModel as ``model``
_PARALLEL_KIND = {"linear_qkv": "column", "linear_fc1": "column", "linear_proj": "row", "linear_fc2": "row",
                  "wq": "column", "wk": "column", "wv": "column", "w1": "column", "w3": "column",
                  "wo": "row", "w2": "row",
                  "q_proj": "column", "k_proj": "column", "v_proj": "column", "gate_proj": "column",
                  "up_proj": "column", "o_proj": "row", "down_proj": "row"}


# ------------------------------------------------------------------------------------------------
# our names
# ------------------------------------------------------------------------------------------------
def normalize_name(name):
    """A file's parameter name in our vocabulary: ``X.lora_A.weight`` -> ``X.mindpet_delta_lora_a``,
    PEFT's ``base_model.model.`` prefix dropped."""
    for pattern, repl in _FOREIGN_LORA:
        name = pattern.sub(repl, name)
    if name.startswith(PEFT_PREFIX):
        name = name[len(PEFT_PREFIX):]
    return name


def is_lora_name(name):
    """True for a LoRA factor's name, ours or foreign."""
    return LORA_MARK in normalize_name(name)


def is_state_key(name):
    """True for optimizer / loop state written beside the weights."""
    return name.startswith(TRAINING_STATE_PREFIXES)


def split_magnitudes(tensors):
    """``({module: DoRA magnitude}, {every other name: array})`` (names normalised for the magnitudes,
    kept as they are for the rest, which :func:`split_lora_pairs` reads next)."""
    magnitudes, rest = {}, {}
    for key, array in tensors.items():
        name = normalize_name(key)
        if not is_state_key(key) and name.endswith("." + LORA_MAGNITUDE):
            magnitudes[name[: -len(LORA_MAGNITUDE) - 1]] = array
        else:
            rest[key] = array
    return magnitudes, rest


def split_lora_pairs(tensors):
    """``({module: (A, B)}, {other name: array})`` from adapter tensors (names normalised, optimizer
    states dropped); a lone A or B, or A/B ranks that differ, are errors."""
    halves, extras = {}, {}
    for key, array in tensors.items():
        if is_state_key(key):
            continue
        name = normalize_name(key)
        if name.endswith("." + LORA_A) or name.endswith("." + LORA_B):
            module, _, leaf = name.rpartition(".")
            halves.setdefault(module, {})[leaf] = array
        elif LORA_MARK in name:
            raise ValueError(f"adapter key {key!r} is neither {LORA_A} nor {LORA_B}")
        else:
            extras[key] = array
    pairs = {}
    for module, parts in halves.items():
        if set(parts) != {LORA_A, LORA_B}:
            raise ValueError(f"adapter: {module} has {sorted(parts)} only; a LoRA pair needs both {LORA_A} "
                             f"and {LORA_B}")
        a, b = parts[LORA_A], parts[LORA_B]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"adapter: {module} has A {list(a.shape)} and B {list(b.shape)}; expected A [r, in] "
                             "and B [out, r] with the same r")
        pairs[module] = (a, b)
    return pairs, extras


# ------------------------------------------------------------------------------------------------
# Hugging Face Llama <-> built-in Llama
# ------------------------------------------------------------------------------------------------
def _map_module(path, to_builtin):
    """Map a module path from HF to built-in (to_builtin) or back; None when it is not a Llama module."""
    src, dst = (0, 1) if to_builtin else (1, 0)
    match = LAYER_RE.match(path)
    if match:
        for pair in _LAYER_MODULES:
            if match.group(2) == pair[src]:
                return f"model.layers.{match.group(1)}.{pair[dst]}"
        return None
    for pair in _TOP_MODULES:
        if path == pair[src]:
            return pair[dst]
    return None


def _map_param(name, to_builtin):
    module, _, leaf = name.rpartition(".")
    mapped = _map_module(module, to_builtin)
    if mapped is None:
        return None
    pair = (module, mapped) if to_builtin else (mapped, module)
    hf_leaf, ms_leaf = _LEAF.get(pair, ("weight", "weight"))
    if leaf != (hf_leaf if to_builtin else ms_leaf):
        return None
    return f"{mapped}.{ms_leaf if to_builtin else hf_leaf}"


def hf_module_to_mindspore(path):
    """``model.layers.0.self_attn.q_proj`` -> ``model.layers.0.attention.wq`` (None if unknown)."""
    return _map_module(path, True)


def mindspore_module_to_hf(path):
    """``model.layers.0.attention.wq`` -> ``model.layers.0.self_attn.q_proj`` (None if unknown)."""
    return _map_module(path, False)


def hf_name_to_mindspore(name):
    """A Hugging Face Llama parameter name -> the built-in Llama's, or None when it has none."""
    return _map_param(name, True)


def mindspore_name_to_hf(name):
    """A built-in Llama parameter name -> Hugging Face's, or None when it has none."""
    return _map_param(name, False)


def map_suffix(name, mapper):
    """``mapper`` of the longest dotted suffix of ``name`` it knows (allows a leading prefix such as
    ``network.``); None if it knows none."""
    parts = name.split(".")
    for i in range(len(parts)):
        mapped = mapper(".".join(parts[i:]))
        if mapped is not None:
            return mapped
    return None


def hf_alternative(name):
    """The built-in Llama name of a Hugging Face-style one (``...self_attn.q_proj.X``), or None."""
    module, _, leaf = name.rpartition(".")
    if leaf in (LORA_A, LORA_B):
        mapped = hf_module_to_mindspore(module)
        return f"{mapped}.{leaf}" if mapped else None
    return hf_name_to_mindspore(name)


# ------------------------------------------------------------------------------------------------
# MindFormers mcore <-> Hugging Face Qwen3 / Llama
# ------------------------------------------------------------------------------------------------
def is_mcore_module(path):
    """True for a module path of a MindFormers mcore model (``...decoder.layers.N.X``, its embedding,
    final norm or output layer)."""
    return MCORE_RE.match(path) is not None


def mcore_module_to_hf(path):
    """``model.decoder.layers.0.self_attention.linear_qkv`` -> ``("model.layers.0.self_attn.q_proj",
    "...k_proj", "...v_proj")`` (the HF modules in fused-row order; one for an unfused module), or None."""
    match = MCORE_RE.match(path)
    if match is None:
        return None
    if match.group("n") is None:
        return (dict(_MCORE_TOP_MODULES)[match.group("path")],)
    for mcore, hf in _MCORE_LAYER_MODULES:
        if match.group("rest") == mcore:
            return tuple(f"model.layers.{match.group('n')}.{m}" for m in hf)
    return None


def hf_module_to_mcore(path, prefix=MCORE_PREFIX):
    """``model.layers.0.self_attn.k_proj`` -> ``("model.decoder.layers.0.self_attention.linear_qkv", 1)``:
    the mcore module and the part's index in its fused rows (0 for an unfused module), or None."""
    match = LAYER_RE.match(path)
    if match:
        for mcore, hf in _MCORE_LAYER_MODULES:
            if match.group(2) in hf:
                return f"{prefix}decoder.layers.{match.group(1)}.{mcore}", hf.index(match.group(2))
        return None
    for mcore, hf in _MCORE_TOP_MODULES:
        if path == hf:
            return f"{prefix}{mcore}", 0
    return None


def parallel_kind(module):
    """'column' or 'row': how tensor parallelism splits the projection ``module`` (by its leaf name),
    None for a module that is not a known projection."""
    return _PARALLEL_KIND.get(module.rsplit(".", 1)[-1])


# ------------------------------------------------------------------------------------------------
# matching a file's names onto a network's
# ------------------------------------------------------------------------------------------------
def resolve_names(keys, targets):
    """Map file keys onto target names: exact, HF-module translated, or one unique dotted-suffix match
    (a ``network.`` / ``model.`` prefix more or less). Returns ``(mapping, unexpected, ambiguous)``."""
    targets = list(targets)
    target_set = set(targets)
    mapping, unexpected, ambiguous = {}, [], {}
    for key in keys:
        cands = [normalize_name(key)]
        alt = hf_alternative(cands[0])
        if alt and alt != cands[0]:
            cands.append(alt)
        exact = [c for c in cands if c in target_set]
        if exact:
            mapping[key] = exact[0]
            continue
        hits = sorted({t for t in targets for c in cands if t.endswith("." + c) or c.endswith("." + t)})
        if len(hits) == 1:
            mapping[key] = hits[0]
        elif hits:
            ambiguous[key] = hits
        else:
            unexpected.append(key)
    seen = {}
    for key, target in mapping.items():
        seen.setdefault(target, []).append(key)
    for target, ks in seen.items():
        if len(ks) > 1:
            for k in ks:
                ambiguous[k] = [target]
                mapping.pop(k)
    return mapping, unexpected, ambiguous
