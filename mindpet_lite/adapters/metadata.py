"""What an adapter file says about itself, and the LoraConfig it is read back as.

Metadata (a JSON object, stored as the ckpt string entry ``__mindpet_lite_metadata__`` or as the
safetensors header entry ``mindpet_lite``)::

    {"format_version": 1, "kind": "lora_adapter", "toolkit": "mindpet_lite", "toolkit_version": "0.1.0",
     "pet_config": {LoraConfig.to_dict()}, "scaling": 2.0,
     "base_fingerprint": {"sha256": "...", "params": 21, "numel": 123456}, "source": "mindpet_lite",
     "weight_layout": "out_in"}

A PiSSA / OLoRA adapter, saved as a rank-2r plain LoRA of the original base (``adapters.mutated_init``),
also records ``"converted_from": {"init_lora_weights", "lora_rank", "lora_alpha"}`` of its training run.

An adapter of a MindFormers mcore model (``...decoder.layers.N.self_attention.linear_qkv``) also records
``"mcore_layout": {"num_attention_heads", "num_query_groups", "kv_channels", "ffn_hidden_size", "qkv",
"fc1"}`` from the model's config: how its fused linear_qkv / linear_fc1 pack q/k/v and gate/up rows
(``adapters/mcore.py``), which export to Hugging Face PEFT needs.

``weight_layout`` says how the adapted layers store W ([out, in] for nn.Dense, [in, out] for a
MindFormers Linear with ``transpose_b=False``), which merging into a checkpoint needs for square W.

The same ``LoraConfig`` that the YAML produced is written here and read back by load, merge and
export through :func:`lora_config`: the scaling always comes from the LoraConfig, per layer
(``LoraConfig.scaling_for(path)``: rank_pattern / alpha_pattern; the stored ``scaling`` is the default
layer's, a cross-check, and the number used only by files without a pet_config). The pattern maps are
stored as ``[[key, value], ...]`` so that the sorted JSON keeps their first-match order.

The base fingerprint hashes the sorted ``(name, shape)`` pairs of the network's non-LoRA parameters,
i.e. the base model, whether or not ``freeze_exclude`` left some of them trainable: the same base gives
the same fingerprint for any choice of trainable extras, and for a PiSSA / OLoRA network whose base
weights hold the residual (values are not hashed). Changing how it is computed would orphan every
saved adapter (``tests/adapters/test_metadata.py`` pins a value).
"""
import hashlib
import json
import logging
import math
import re
from collections import Counter

from mindspore import nn

from mindpet_lite import _checks, _files
from mindpet_lite._version import __version__
from mindpet_lite.adapters.mcore import layout_from_config
from mindpet_lite.adapters.names import is_mcore_module
from mindpet_lite.graph.adapters import first_adapter_cells
from mindpet_lite.graph.freeze import lora_cells
from mindpet_lite.pet import variants
from mindpet_lite.adapters.prefix import is_prefix_config
from mindpet_lite.pet.config import CONFIG_TYPES, LoraConfig, load_pet_config

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
DELTA_MARK = "mindpet_delta_"  # every delta parameter's name holds it (LoRA's: mindpet_delta_lora_)
CKPT_META_KEY = "__mindpet_lite_metadata__"
ST_META_KEY = "mindpet_lite"
_META_KEYS = {"ckpt": CKPT_META_KEY, "safetensors": ST_META_KEY}


# ------------------------------------------------------------------------------------------------
# the document
# ------------------------------------------------------------------------------------------------
def base_fingerprint(net_or_shapes):
    """``{"sha256", "params", "numel"}`` of the base model: the sorted (name, shape) of the non-delta
    parameters (no ``mindpet_delta_`` in the name) of a network (or of a ``{name: shape}`` dict)."""
    if isinstance(net_or_shapes, nn.Cell):
        shapes = {name: tuple(p.shape) for name, p in net_or_shapes.parameters_and_names()}
    elif isinstance(net_or_shapes, dict):
        shapes = {name: tuple(getattr(v, "shape", v)) for name, v in net_or_shapes.items()}
    else:
        raise TypeError(f"net must be a mindspore.nn.Cell or a dict of name -> shape, "
                        f"got {_checks.describe(net_or_shapes)}")
    base = sorted((n, s) for n, s in shapes.items() if DELTA_MARK not in n)
    digest = hashlib.sha256("\n".join(f"{n}:{list(s)}" for n, s in base).encode()).hexdigest()
    return {"sha256": digest, "params": len(base), "numel": int(sum(math.prod(s) for _, s in base))}


def build_metadata(config, fingerprint, source="mindpet_lite", **extra):
    """The metadata dict of an adapter described by ``config`` (a LoraConfig, another pet config, or None).
    ``kind`` is 'lora_adapter', 'adapter', 'low_rank_adapter', ... (``<pet_type>_adapter``); ``scaling`` is LoRA's only."""
    pet_type = getattr(config, "pet_type", "lora")
    if is_prefix_config(config):
        kind = "prefix_adapter"
    else:
        kind = pet_type if pet_type.endswith("adapter") else f"{pet_type}_adapter"
    meta = {"format_version": FORMAT_VERSION, "kind": kind, "toolkit": "mindpet_lite",
            "toolkit_version": __version__, "source": source,
            "pet_config": config.to_dict() if config is not None else None,
            "scaling": getattr(config, "scaling", None), "base_fingerprint": fingerprint}
    meta.update(extra)
    return meta


def weight_layout(net):
    """'out_in' ([out, in], nn.Dense / Hugging Face) or 'in_out' (a MindFormers Linear with
    ``transpose_b=False``) when every LoRA cell of ``net`` agrees, else None. Merging a checkpoint reads
    it: square weights do not tell their layout by their shape."""
    layouts = {"out_in" if getattr(cell, "transpose_b", True) else "in_out" for cell in lora_cells(net).values()}
    return layouts.pop() if len(layouts) == 1 else None


def mcore_layout(net, tensors):
    """The ``mcore_layout`` entry of an adapter of an mcore model (its fused layers' geometry, from
    ``net.config``), or None for other networks or a config that does not tell the heads."""
    fused = [n for n in tensors if is_mcore_module(n.rpartition(".")[0])
             and n.rpartition(".")[0].rsplit(".", 1)[-1] in ("linear_qkv", "linear_fc1")]
    config = getattr(net, "config", None)
    if not fused or config is None:
        return None
    try:
        layout = layout_from_config(config)
    except (TypeError, ValueError) as err:
        logger.info("save_adapter: the model config does not describe the fused layers (%s): no mcore_layout", err)
        return None
    return layout.to_dict() if layout.num_attention_heads else None


def is_ours(meta):
    """True when the metadata was written by this toolkit (or made by it from a PEFT directory)."""
    return bool(meta.get("pet_config") is not None or meta.get("source"))


# ------------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------------
def write_adapter_file(tensors, path, metadata=None, format=None):  # pylint: disable=redefined-builtin
    """``_files.write_checkpoint`` with the metadata stored as the format's JSON entry."""
    fmt = _files.check_output_path(path, format)
    text = None
    if metadata is not None:
        text = {_META_KEYS[fmt]: json.dumps(metadata, sort_keys=True)}
    return _files.write_checkpoint(tensors, path, fmt, text=text)


def read_adapter_file(path):
    """``(tensors, metadata)`` of an adapter checkpoint file (``{}`` without mindpet_lite metadata)."""
    tensors, text = _files.read_checkpoint(path)
    if not tensors:
        raise ValueError(f"{path} holds no tensors")
    return tensors, metadata_from_text(text, path)


def metadata_from_text(text, path):
    """The metadata dict from a checkpoint's text entries, ``{}`` when there is none."""
    raw = text.get(CKPT_META_KEY, text.get(ST_META_KEY))
    if raw is None:
        return {}
    try:
        meta = json.loads(raw)
    except ValueError as err:
        raise ValueError(f"{path}: the mindpet_lite metadata is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: the mindpet_lite metadata must be a JSON object, got {type(meta).__name__}")
    return meta


# ------------------------------------------------------------------------------------------------
# metadata <-> LoraConfig
# ------------------------------------------------------------------------------------------------
def lora_config(metadata):
    """The adapter's validated ``LoraConfig``, or None for metadata without a pet_config.

    Custom initializer objects are recorded by class name, which does not rebuild: those keys fall back
    to the defaults (they do not matter once the factors are trained). A stored ``scaling`` that
    disagrees with the config's is an error: the file does not describe its own weights.
    """
    cfg = dict((metadata or {}).get("pet_config") or {})
    if not cfg or pet_type_of(metadata) != "lora":  # another method: pet_config_of
        return None
    for key in ("lora_a_init", "lora_b_init"):
        value = cfg.get(key)
        if isinstance(value, str):
            try:
                LoraConfig.check_init(key, value)
            except (TypeError, ValueError):
                cfg.pop(key)
    config = LoraConfig.from_dict(cfg, section="adapter metadata pet_config")
    stored = metadata.get("scaling")
    if stored is not None and not (_checks.is_number(stored) and math.isclose(stored, config.scaling, rel_tol=1e-6)):
        raise ValueError(f"adapter metadata: scaling {_checks.describe(stored)} disagrees with its pet_config "
                         f"(lora_alpha={config.lora_alpha}, lora_rank={config.lora_rank}, "
                         f"use_rslora={config.use_rslora} give {config.scaling:g})")
    return config


def pet_type_of(metadata):
    """The pet_type an adapter's metadata records ('lora' for files without one)."""
    return str(((metadata or {}).get("pet_config") or {}).get("pet_type", "lora")).lower()


def pet_config_of(metadata):
    """The adapter's validated pet config of any pet_type (``lora_config`` for LoRA), or None."""
    cfg = dict((metadata or {}).get("pet_config") or {})
    if not cfg or pet_type_of(metadata) == "lora":
        return lora_config(metadata)
    return load_pet_config(cfg, section="adapter metadata pet_config")


def pet_config_from_metadata(metadata):
    """The adapter's pet config (a LoraConfig, or an AdapterConfig ... for other methods): build the
    network with it to load the adapter."""
    config = pet_config_of(metadata)
    if config is None:
        raise ValueError("the adapter's metadata holds no pet_config")
    return config


def adapter_scaling(metadata):
    """The scaling s of an adapter: its LoraConfig's, else a bare stored ``scaling``, else None."""
    config = lora_config(metadata)
    if config is not None:
        return config.scaling
    stored = (metadata or {}).get("scaling")
    return float(stored) if _checks.is_number(stored) else None


def adapter_config(net, config=None):
    """The ``LoraConfig`` an adapter saved from ``net`` records: one rule, first that applies:

    1. ``config``, when given (a LoraConfig or a pet_config dict);
    2. the config ``get_pet_model`` attached to the network (``net.pet_config``);
    3. a MindFormers model's own ``net.config.pet_config`` block (its LoRA keys);
    4. a config described from the LoRA cells themselves (per-layer ranks / alphas as rank_pattern /
       alpha_pattern; they must agree on rsLoRA).

    Whichever it is must agree with every LoRA cell (rank and scaling), or the metadata would not
    describe the weights. None for a network without LoRA cells and without a config. Cells whose first
    adapter is a placeholder (added for a named adapter) are not part of it.
    """
    cells = first_adapter_cells(net)
    if config is None:
        config = getattr(net, "pet_config", None)
    if isinstance(config, dict) and str(config.get("pet_type", "lora")).lower() != "lora":
        config = load_pet_config(config)
    if isinstance(config, CONFIG_TYPES) and not isinstance(config, LoraConfig):
        return config  # another method (adapter, ...): it has no LoRA cells to agree with
    if config is None:
        config = _mindformers_config(net)
    if config is None:
        if not cells:
            return None
        config = _describe_cells(cells)
    if isinstance(config, dict):
        config = load_pet_config(config)
    if is_prefix_config(config):  # no LoRA cells to check: the tensors' shapes are checked on load
        return config
    if not isinstance(config, LoraConfig):
        raise TypeError(f"config must be a LoraConfig, a pet_config dict or None, got {_checks.describe(config)}")
    for name, cell in cells.items():  # each layer's own rank / alpha (rank_pattern / alpha_pattern)
        if cell.lora_rank != config.rank_for(name):
            via = " (its rank_pattern)" if config.rank_for(name) != config.lora_rank else ""
            raise ValueError(f"config.lora_rank={config.rank_for(name)}{via} but {name} has lora_rank={cell.lora_rank}: "
                             "the metadata would not describe the weights")
        if not math.isclose(cell.scaling, config.scaling_for(name), rel_tol=1e-9):
            raise ValueError(f"config gives {name} scaling {config.scaling_for(name):g} (lora_alpha="
                             f"{config.alpha_for(name)}, use_rslora={config.use_rslora}) but it computes with "
                             f"scaling {cell.scaling:g}")
        if cell.use_dora != config.use_dora:
            raise ValueError(f"config.use_dora={config.use_dora} but {name} has use_dora={cell.use_dora}: "
                             "the metadata would not describe the weights")
    return config


def _mindformers_config(net):
    """A MindFormers model's ``config.pet_config`` (a dict-like block) as a LoraConfig, or None."""
    block = getattr(getattr(net, "config", None), "pet_config", None)
    if block is None:
        return None
    try:
        return LoraConfig.from_dict({k: v for k, v in dict(block).items() if k in LoraConfig.keys()})
    except (TypeError, ValueError) as err:
        logger.info("save_adapter: the model's config.pet_config is not usable (%s); describing the LoRA cells", err)
        return None


def _describe_cells(cells):
    """A LoraConfig describing LoRA cells built without one (:func:`describe_layers` of their first adapter)."""
    dora = {c.use_dora for c in cells.values()}
    if len(dora) != 1:
        raise ValueError("some LoRA cells use DoRA and others do not; pass config= to say what the adapter is")
    return describe_layers({name: (c.lora_rank, c.lora_alpha, c.use_rslora,
                                   float(getattr(c.lora_dropout, "p", 0.0)) if c.lora_dropout is not None else 0.0)
                            for name, c in cells.items()}, use_dora=dora.pop())


def describe_layers(layers, target_modules=None, use_dora=False):
    """A LoraConfig describing ``{layer path: (rank, alpha, use_rslora, dropout)}``: the commonest rank and
    alpha are lora_rank / lora_alpha, a layer with another gets a rank_pattern / alpha_pattern key of its
    own (its escaped path, anchored when it would also match another layer's); all must agree on rsLoRA.
    target_modules defaults to the layers' leaf names; use_dora is recorded as given."""
    rslora = {spec[2] for spec in layers.values()}
    if len(rslora) != 1:
        raise ValueError("the LoRA cells disagree on use_rslora; pass config= to say what the adapter is")
    rank = Counter(spec[0] for spec in layers.values()).most_common(1)[0][0]
    alpha = Counter(spec[1] for spec in layers.values()).most_common(1)[0][0]
    keys = {}
    for name in layers:
        key = re.escape(name)
        keys[name] = f"^{key}" if any(variants.pattern_key([key], other) for other in layers if other != name) else key
    leaves = sorted({name.rsplit(".", 1)[-1] for name in layers})
    if target_modules is None:
        target_modules = "|".join(f".*{re.escape(leaf)}" for leaf in leaves)
    return LoraConfig(lora_rank=rank, lora_alpha=alpha, use_rslora=rslora.pop(), use_dora=use_dora,
                      lora_dropout=max(spec[3] for spec in layers.values()), target_modules=target_modules,
                      rank_pattern={keys[n]: spec[0] for n, spec in layers.items() if spec[0] != rank},
                      alpha_pattern={keys[n]: spec[1] for n, spec in layers.items() if spec[1] != alpha})
