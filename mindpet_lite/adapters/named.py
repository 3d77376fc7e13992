"""Named adapters to and from files: the file side of ``graph/adapters.py`` (``load_adapter`` /
``save_adapter`` with ``adapter_name=`` call these).

Loading adapter ``name`` from an ordinary single-adapter file: a layer it targets that has no LoRADense
(or every layer, on a network without LoRA cells; nn.Dense, MindFormers' Linear or an mcore parallel
linear) gets one, whose first adapter is a frozen B = 0
placeholder (``graph.adapters``): the other adapters add nothing there. It may target fewer layers
than the others: its rows run the base weight at the rest. A key naming no dense layer is an error. The pair becomes the cells'
``mindpet_delta_lora_a__<name>`` / ``_b__<name>``, with the adapter's own rank per layer (from its
shapes, checked against its rank_pattern) and alpha / rsLoRA (its metadata's pet_config, alpha_pattern
too; a file without one: the scaling it records, else the first adapter's alpha). A named adapter holds LoRA factors only, loaded frozen (PEFT's
``is_trainable=False``): trainable extras such as norms are the base's and belong to the first.

Saving adapter ``name`` writes the ordinary format under the first adapter's names, with metadata
describing it (its ranks and alphas, per layer as rank_pattern / alpha_pattern where they differ,
rsLoRA, and target_modules naming exactly the layers it covers), so
it loads into a single-adapter network and exports to PEFT unchanged.
"""
import logging
import re

import numpy as np
from mindspore import Tensor, nn

from mindpet_lite import _checks
from mindpet_lite.adapters import metadata as _meta
from mindpet_lite.adapters.names import is_lora_name, is_state_key, resolve_names
from mindpet_lite.delta.lora import LORA_A, LORA_B
from mindpet_lite.delta.lora_adapters import check_adapter_name
from mindpet_lite.graph.adapters import first_adapter_cells, list_adapters, mark_first_placeholder, set_adapter
from mindpet_lite.graph.freeze import lora_cells
from mindpet_lite.pet.config import LoraConfig
from mindpet_lite.pet.model import plan_lora
from mindpet_lite.pet.targets import is_dense_like

logger = logging.getLogger(__name__)

__all__ = ["load_named_adapter", "named_adapter_tensors"]


def _pairs(tensors, cells, path):
    """{cell path: (A, B)} of the file's pairs, mapped onto the network's LoRA cells."""
    targets = {f"{p}.{leaf}": p for p in cells for leaf in (LORA_A, LORA_B)}
    mapping, unexpected, ambiguous = resolve_names(tensors, targets)
    if ambiguous:
        detail = "; ".join(f"{k} -> {v}" for k, v in sorted(ambiguous.items())[:8])
        raise ValueError(f"{path}: adapter keys match the network ambiguously: {detail}")
    if unexpected:
        raise ValueError(f"{path}: {len(unexpected)} adapter keys name no dense layer of the network "
                         f"({_checks.short_list(unexpected)})")
    found = {}
    for key, target in mapping.items():
        found.setdefault(targets[target], {})[target.rsplit(".", 1)[-1]] = tensors[key]
    half = sorted(p for p, pair in found.items() if len(pair) != 2)
    if half:
        raise ValueError(f"{path}: {len(half)} layers have only one of lora_a / lora_b: {_checks.short_list(half)}")
    return {p: (pair[LORA_A], pair[LORA_B]) for p, pair in found.items()}


def _ranks(pairs, cells, path):
    """{cell path: rank} of the file's pairs, after checking every shape against its layer."""
    ranks = {}
    for p, (a, b) in pairs.items():
        cell = cells[p]
        if a.ndim != 2 or b.ndim != 2 or a.shape[1] != cell.in_channels or b.shape[0] != cell.out_channels \
                or a.shape[0] != b.shape[1]:
            raise ValueError(f"{path}: {p}: lora_a {list(a.shape)} / lora_b {list(b.shape)} do not fit the layer "
                             f"[{cell.out_channels}, {cell.in_channels}] (want [r, {cell.in_channels}] and "
                             f"[{cell.out_channels}, r])")
        ranks[p] = int(a.shape[0])
    return ranks


def _alphas(meta, ranks, first, path):
    """{cell path: (alpha, use_rslora)}: the pet_config's (rank_pattern / alpha_pattern too), a recorded
    scaling, else the first adapter's alpha."""
    config = _meta.lora_config(meta)
    if config is not None:
        wrong = {p: (r, config.rank_for(p)) for p, r in ranks.items() if config.rank_for(p) != r}
        if wrong:
            p, (have, want) = sorted(wrong.items())[0]
            raise ValueError(f"{path}: the metadata gives {p} lora_rank={want} but its factors have rank {have} "
                             f"({len(wrong)} layers disagree)")
        return {p: (config.alpha_for(p), config.use_rslora) for p in ranks}
    scaling = _meta.adapter_scaling(meta)
    if scaling is not None:
        return {p: (scaling * r, False) for p, r in ranks.items()}
    if first is None:
        raise ValueError(f"{path} records no lora_alpha or scaling (no pet_config), and the network has no first "
                         "adapter to take it from: give the file its metadata (import it, or save it with config=)")
    logger.info("load_adapter: %s records no alpha: using the first adapter's lora_alpha=%s", path, first.lora_alpha)
    return {p: (first.lora_alpha, first.use_rslora) for p in ranks}


def load_named_adapter(net, tensors, meta, path, name, strict):
    """Add adapter ``name`` from ``(tensors, meta)`` read from ``path``; everything is checked first.
    Layers it targets without a LoRA cell get one (:func:`_new_cells`); on a network that had none,
    the network is frozen and ``name`` made the active adapter (PEFT's
    ``from_pretrained(base, path, adapter_name=name)``)."""
    check_adapter_name(name)
    known = list_adapters(net)
    if name in known:
        raise ValueError(f"adapter_name {name!r} is already used (the network holds {known}): delete_adapter it "
                         "first or choose another name")
    config = _meta.lora_config(meta)
    if config is not None and config.use_dora:
        raise ValueError(f"{path} is a DoRA adapter (use_dora=True): a named adapter is plain LoRA; load it as "
                         "the first adapter (without adapter_name)")
    other = sorted(k for k in tensors if not is_lora_name(k) and not is_state_key(k))
    if other and _meta.is_ours(meta):
        text = (f"{path}: a named adapter holds LoRA factors only, the file also has {len(other)} other trainable "
                f"tensors ({_checks.short_list(other)}): load it as the first adapter (without adapter_name)")
        if strict:
            raise ValueError(text + ", or pass strict=False to leave them out")
        logger.warning("load_adapter (strict=False): %s; left out", text)
    tensors = {k: v for k, v in tensors.items() if is_lora_name(k) and not is_state_key(k)}
    if not tensors:
        raise ValueError(f"{path} holds no LoRA weights (names with mindpet_delta_lora_a/_b or lora_A/lora_B)")
    had_cells = bool(lora_cells(net))
    first = next(iter(first_adapter_cells(net).values()), None)
    plan = _new_cells(net, tensors)
    cells = dict(lora_cells(net), **(plan.lora_cells() if plan is not None else {}))
    pairs = _pairs(tensors, cells, path)
    ranks = _ranks(pairs, cells, path)
    alphas = _alphas(meta, ranks, first, path)
    _checks.check_finite_arrays(f"load_adapter {path}", {f"{p}.{leaf}": arr for p, pair in pairs.items()
                                                         for leaf, arr in zip((LORA_A, LORA_B), pair)})
    if plan is not None:
        plan.swap()
        for cell in plan.lora_cells().values():
            mark_first_placeholder(cell)
        logger.info("load_adapter: %d LoRA cells added for adapter %r (no delta there for the others): %s",
                    len(plan.lora_cells()), name, _checks.short_list(sorted(plan.lora_cells())))
    for p, (a, b) in pairs.items():
        cells[p].add_adapter(name, ranks[p], alphas[p][0], Tensor(np.asarray(a, np.float32)),
                             Tensor(np.asarray(b, np.float32)), use_rslora=alphas[p][1])
        for param in cells[p].named_adapter_parameters(name).values():
            param.requires_grad = False
    if not had_cells:  # PEFT's from_pretrained(..., adapter_name=): the base frozen, the adapter active
        for param in net.get_parameters():
            param.requires_grad = False
        set_adapter(net, name)
    logger.info("load_adapter: adapter %r (ranks %s) on %d of %d LoRA cells from %s", name,
                sorted(set(ranks.values())), len(pairs), len(cells), path)
    return meta


def _new_cells(net, tensors):
    """The plan (``pet.plan_lora``, nothing changed yet) of LoRA cells for the layers without one that
    the file's keys name (nn.Dense, MindFormers' Linear and mcore parallel linears, as get_pet_model), or None when every one it names has a LoRA cell. Their first adapter is a
    placeholder of rank 1 (``graph.adapters.mark_first_placeholder`` once they are in)."""
    cells = lora_cells(net)
    dense = [p for p, c in net.cells_and_names() if p and is_dense_like(c) and p not in cells]
    targets = {f"{p}.{leaf}": p for p in list(cells) + dense for leaf in (LORA_A, LORA_B)}
    mapping, _, ambiguous = resolve_names(tensors, targets)
    new = sorted({targets[t] for k, t in mapping.items() if k not in ambiguous} - set(cells))
    if not new:
        return None
    return plan_lora(net, LoraConfig(lora_rank=1, lora_alpha=1, lora_dropout=0.0,
                                     target_modules="|".join(re.escape(p) for p in new)), extend=True)


def named_adapter_tensors(net, name, config=None):
    """``({file name: array}, LoraConfig)`` of adapter ``name`` in the single-adapter format."""
    cells = {p: c for p, c in lora_cells(net).items() if name in c.adapter_names()}
    if not cells:
        raise ValueError(f"unknown adapter {name!r}: the network holds {list_adapters(net)}")
    tensors = {}
    for p, cell in cells.items():
        for leaf, param in cell.named_adapter_parameters(name).items():
            tensors[f"{p}.{leaf}"] = param.asnumpy()
    if config is None:
        config = _meta.describe_layers({p: c.adapter_spec(name)[:3] + (0.0,) for p, c in cells.items()},
                                       _targets(list(cells), net))
    elif isinstance(config, dict):
        config = LoraConfig.from_dict(config)
    if not isinstance(config, LoraConfig):
        raise TypeError(f"config must be a LoraConfig, a pet_config dict or None, got {_checks.describe(config)}")
    for p, cell in cells.items():
        rank, alpha, rslora, scaling = cell.adapter_spec(name)
        if config.rank_for(p) != rank or not np.isclose(config.scaling_for(p), scaling):
            raise ValueError(f"config (lora_rank={config.rank_for(p)}, scaling {config.scaling_for(p):g} at {p}) does "
                             f"not describe adapter {name!r} there (rank {rank}, alpha {alpha}, rslora {rslora})")
    return tensors, config


def _targets(covered, net):
    """target_modules naming exactly ``covered``: leaf names when they select no other dense layer of
    the network, else the escaped paths."""
    leaves = sorted({p.rsplit(".", 1)[-1] for p in covered})
    dense = {p for p, cell in net.cells_and_names() if isinstance(cell, nn.Dense)}
    if {p for p in dense if p.rsplit(".", 1)[-1] in leaves} == set(covered):
        return "|".join(f".*{re.escape(leaf)}" for leaf in leaves)
    return "|".join(re.escape(p) for p in sorted(covered))
