"""Hugging Face PEFT exchange for MindFormers mcore adapters: which HF modules (and rows) a fused mcore
pair exports to, and the reverse fusion on import (``adapters/mcore.py`` has the row layouts).

Export: a ``linear_qkv`` pair becomes q_proj / k_proj / v_proj, each with the shared A and its rows of B
(of a DoRA magnitude too); ``linear_fc1`` becomes gate_proj / up_proj; the layout comes from the
adapter's ``mcore_layout`` metadata or the model config given. Import: :func:`to_mcore`.
"""
import logging

from mindpet_lite import _checks
from mindpet_lite.adapters import mcore as _mcore
from mindpet_lite.adapters import metadata as _meta
from mindpet_lite.adapters import names
from mindpet_lite.delta.lora import LORA_A, LORA_B
from mindpet_lite.pet.config import LoraConfig

logger = logging.getLogger(__name__)

__all__ = ["fused_layout", "hf_parts", "to_mcore"]


def fused_layout(pairs, extras, meta, model_config):
    """The mcore FusedLayout when the adapter's names are mcore's (all or none of them), else None."""
    modules = list(pairs) + [name.rpartition(".")[0] for name in extras]
    mcore = [m for m in modules if names.is_mcore_module(m)]
    if not mcore:
        if model_config is not None:
            raise ValueError("model_config is for MindFormers mcore adapters (decoder.layers.N...); this adapter has "
                             "none of their names")
        return None
    if len(mcore) != len(modules):
        other = sorted(set(modules) - set(mcore))
        raise ValueError(f"the adapter mixes mcore module names with others ({_checks.short_list(other)}): one model's "
                         "adapter has one naming")
    recorded = meta.get("mcore_layout")
    given = _mcore.layout_from_config(model_config) if model_config is not None else None
    if recorded is not None:
        recorded = _mcore.FusedLayout.from_dict(recorded)
        if given is not None and any(v is not None and recorded.to_dict()[k] not in (None, v)
                                     for k, v in given.to_dict().items()):
            raise ValueError(f"model_config gives the fused layout {given.to_dict()} but the adapter's metadata "
                             f"records {recorded.to_dict()}: it was trained on another model")
        return recorded if given is None else given
    if given is None:
        logger.info("export_peft: no mcore_layout in the adapter and no model_config: MindFormers' defaults "
                    "(qkv interleaved per query group, fc1 gate/up interleaved)")
    return given if given is not None else _mcore.FusedLayout()


def hf_parts(module, rows, layout):
    """[(HF module, row index)] of one of our modules: one part (all rows) for the built-in Llama and
    unfused mcore modules, the fused layout's parts for linear_qkv / linear_fc1; None when unknown."""
    if layout is None:
        hf = names.map_suffix(module, names.mindspore_module_to_hf)
        return None if hf is None else [(hf, slice(None))]
    hf = names.mcore_module_to_hf(module)
    if hf is None:
        return None
    if len(hf) == 1:
        return [(hf[0], slice(None))]
    return list(zip(hf, layout.part_rows(module, rows)))


def to_mcore(tensors, meta, model_config):
    """An adapter read from PEFT (built-in Llama names) as an adapter of a MindFormers mcore model.

    q/k/v (gate/up) pairs fuse into one ``linear_qkv`` (``linear_fc1``) pair by the model's fused layout
    (``mcore.fuse_lora_parts``): rank r when their A's and scalings are equal (an adapter exported from
    an mcore model), else a rank-Σr pair (A's stacked, B block-diagonal by part) that gives every part's
    rows exactly; its rank and alpha are recorded per layer (rank_pattern / alpha_pattern). A part PEFT
    did not adapt (e.g. only q_proj, v_proj) gets zero rows. DoRA adapters are refused: a fused
    magnitude for an unadapted part would need the base's row norms.
    """
    layout = _mcore.layout_from_config(model_config)
    if layout is None:
        raise ValueError("importing to an mcore model needs model_config (--model-config): its heads and fused layouts")
    config = _meta.pet_config_from_metadata(meta)
    if config.use_dora:
        raise ValueError("a DoRA adapter is not fused into mcore layers (an unadapted q/k/v part would need the base "
                         "weight's row norms); import it with target='llama'")
    pairs, extras = names.split_lora_pairs(tensors)
    grouped = {}
    for module, (a, b) in pairs.items():
        hf = names.mindspore_module_to_hf(module)
        target = names.hf_module_to_mcore(hf) if hf else None
        if target is None:
            raise ValueError(f"{module} ({hf}) has no MindFormers mcore counterpart")
        grouped.setdefault(target[0], {})[target[1]] = (a, b, config.scaling_for(module))
    out, layers = {}, {}
    for module, parts in sorted(grouped.items()):
        leaf = module.rsplit(".", 1)[-1]
        if leaf == "linear_qkv":
            if None in (layout.num_attention_heads, layout.num_query_groups, layout.kv_channels):
                layout.qkv_rows(0)  # raises, naming what the config lacks
            rows = (layout.num_attention_heads + 2 * layout.num_query_groups) * layout.kv_channels
        elif leaf == "linear_fc1":
            rows = 2 * next(iter(parts.values()))[1].shape[0]
        else:
            rows = next(iter(parts.values()))[1].shape[0]
        a, b, rank, scaling = _mcore.fuse_lora_parts(parts, layout.part_rows(module, rows), rows, module)
        out[f"{module}.{LORA_A}"], out[f"{module}.{LORA_B}"] = a, b
        alpha = scaling * (rank ** 0.5 if config.use_rslora else rank)
        alpha = int(round(alpha)) if abs(alpha - round(alpha)) < 1e-9 else alpha
        layers[module] = (rank, alpha, config.use_rslora, config.lora_dropout)
        if rank != next(iter(parts.values()))[0].shape[0]:
            logger.info("import_peft: %s: its parts' A differ, fused as a rank-%d pair (exact)", module, rank)
    saved = []
    for name, array in extras.items():
        hf = names.mindspore_name_to_hf(name)
        target = names.hf_module_to_mcore(hf.rsplit(".", 1)[0]) if hf else None
        if target is None or names.mcore_module_to_hf(target[0]) is None or len(names.mcore_module_to_hf(target[0])) > 1:
            raise ValueError(f"modules_to_save entry {hf or name} has no unfused MindFormers mcore counterpart")
        out[f"{target[0]}.{hf.rsplit('.', 1)[1]}"] = array
        saved.append(target[0])
    described = _meta.describe_layers(layers, use_dora=False).to_dict()
    described["modules_to_save"] = sorted(saved) or None
    lora_config = LoraConfig.from_dict(described)
    new_meta = _meta.build_metadata(lora_config, None, source="peft", peft_config=meta.get("peft_config"),
                                    mcore_layout=layout.to_dict())
    return out, new_meta
