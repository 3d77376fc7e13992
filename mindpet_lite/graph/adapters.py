"""Named adapters of a network: list, switch, disable, delete, and the per-row selection of a mixed batch.

Every LoRADense holds the first adapter ("default"); a named adapter lives in the cells it targets
(``LoRADense.add_adapter``, or ``adapters.io.load_adapter(..., adapter_name=)``). The network's
adapters are listed "default" first, then in the order they first appear walking the cells. With
adapter X active, a cell that does not hold X runs its base weight: X's rows see the base there.

A mixed batch passes a one-hot ``rows`` [B, K] (K = the network's adapters in list order, a zero
row for ``"__base__"``) down the model's construct to every LoRADense (``models.llama`` hands it to
the projections that take it). It is a graph input, not a Parameter: no state in the network (the
checkpoint, freezing, the base fingerprint and optimizers see nothing new), any batch size, and a
call without it compiles to the same graph as before.

A DoRA cell cannot take part in a mixed batch (its mixed branch would be plain LoRA): a batch whose
rows all name one adapter then runs it as the active adapter for the call (:func:`running_adapter`),
and ``infer.predict`` batches such a network's rows by adapter (:func:`unmixable_cells`).

A LoRA cell added for a named adapter (a layer the first adapter does not target, or a network that had
no LoRA cells) holds a placeholder first adapter: B = 0, frozen, so "default" adds nothing there, and
it is not part of the first adapter (:func:`first_adapter_cells`: saving, loading and describing
"default" leave it out).
"""
import contextlib

import numpy as np
from mindspore import nn, ops

from mindpet_lite import _checks
from mindpet_lite.delta.lora import LORA_A, LORA_B
from mindpet_lite.delta.lora_adapters import BASE_ROW, DEFAULT_ADAPTER, pair_names
from mindpet_lite.graph.freeze import lora_cells

__all__ = ["first_adapter_cells", "mark_first_placeholder", "list_adapters", "set_adapter", "disable_adapter", "delete_adapter", "adapter_params",
           "extra_adapter_params", "adapter_rows", "unmixable_cells", "running_adapter", "BASE_ROW", "DEFAULT_ADAPTER"]


PLACEHOLDER = "first_adapter_placeholder"  # the cell attribute that marks a placeholder first adapter


def mark_first_placeholder(cell):
    """Make ``cell``'s first adapter a placeholder: B = 0 (no delta), both factors frozen."""
    params = cell.adapter_parameters()
    params[LORA_B].set_data(ops.zeros(params[LORA_B].shape, params[LORA_B].dtype))
    for param in params.values():
        param.requires_grad = False
    setattr(cell, PLACEHOLDER, True)
    return cell


def first_adapter_cells(net):
    """{path: LoRADense} of the cells that hold the first adapter (not a placeholder of it)."""
    return {path: cell for path, cell in lora_cells(net).items() if not getattr(cell, PLACEHOLDER, False)}


def list_adapters(net):
    """The network's adapter names: "default" first (when it has LoRA cells), then in the order added."""
    names = {}
    for cell in lora_cells(net).values():
        names.update(dict.fromkeys(cell.adapter_names()))
    return list(names)


def _check_known(net, name, what="adapter_name"):
    known = list_adapters(net)
    if not isinstance(name, str) or name not in known:
        raise ValueError(f"{what}: unknown adapter {_checks.describe(name)}; the network holds {known}")
    return known


def set_adapter(net, name):
    """Make ``name`` the adapter every LoRA cell uses (cells without it run their base weight).
    Refused, nothing changed, for an unknown name or when a merged cell would have to run another
    adapter than the one merged into it."""
    _check_known(net, name)
    cells = lora_cells(net)
    merged = sorted(path for path, cell in cells.items() if cell.merged)
    if merged and name != DEFAULT_ADAPTER:
        raise ValueError(f"set_adapter({name!r}): {len(merged)} LoRA cells are merged (their weights hold the "
                         f"'default' adapter), e.g. {merged[0]}: unmerge them first")
    for cell in cells.values():
        cell.set_active_adapter(name if name in cell.adapter_names() else None)


@contextlib.contextmanager
def disable_adapter(net):
    """``with disable_adapter(net):`` runs the base model; the active adapters come back after."""
    cells = lora_cells(net)
    merged = sorted(path for path, cell in cells.items() if cell.merged)
    if merged:
        raise ValueError(f"disable_adapter: {len(merged)} LoRA cells are merged, e.g. {merged[0]}: the base "
                         "weights are not there to run; unmerge them first")
    before = {path: cell.active_adapter for path, cell in cells.items()}
    for cell in cells.values():
        cell.set_active_adapter(None)
    try:
        yield net
    finally:
        for path, cell in cells.items():
            cell.set_active_adapter(before[path])


def delete_adapter(net, name):
    """Remove a named adapter (its parameters) from every cell holding it. If it was active the
    network runs "default" after. The first adapter cannot be deleted (it is the layers' own)."""
    _check_known(net, name)
    if name == DEFAULT_ADAPTER:
        raise ValueError("delete_adapter: 'default' is the first adapter (the layers' own mindpet_delta_lora_a / "
                         "_b) and cannot be deleted; use disable_adapter or set_adapter")
    cells = [cell for cell in lora_cells(net).values() if name in cell.adapter_names()]
    was_active = any(cell.active_adapter == name for cell in cells)
    for cell in cells:
        cell.delete_adapter(name)
    if was_active:
        set_adapter(net, DEFAULT_ADAPTER)


def adapter_params(net, name):
    """``{network parameter name: Parameter}`` of one adapter's factors."""
    _check_known(net, name)
    wanted = {}
    for path, cell in lora_cells(net).items():
        if name in cell.adapter_names():
            for leaf in pair_names(LORA_A, LORA_B, name):
                wanted[id(getattr(cell, leaf))] = f"{path}.{leaf}" if path else leaf
    return {n: p for n, p in net.parameters_and_names() if id(p) in wanted}


def extra_adapter_params(net):
    """``{network parameter name: Parameter}`` of every adapter but the first ("default")."""
    wanted = set()
    for cell in lora_cells(net).values():
        for name in cell.adapter_names()[1:]:
            wanted.update(id(p) for p in cell.named_adapter_parameters(name).values())
    return {n: p for n, p in net.parameters_and_names() if id(p) in wanted}


def adapter_rows(net, adapter_names, batch):
    """The float32 one-hot [batch, K] a mixed batch runs with (K = ``list_adapters(net)``), after
    checking every name and preparing every LoRA cell for it (``LoRADense.set_mix_columns``)."""
    if not isinstance(net, nn.Cell):
        raise TypeError(f"net must be a mindspore.nn.Cell, got {_checks.describe(net)}")
    if not isinstance(adapter_names, (list, tuple)):
        raise TypeError(f"adapter_names must be a list of adapter names, one per row, got "
                        f"{_checks.describe(adapter_names)}")
    if len(adapter_names) != batch:
        raise ValueError(f"adapter_names must hold one name per row ({batch} rows), got {len(adapter_names)}")
    cells = lora_cells(net)
    known = list_adapters(net)
    for i, name in enumerate(adapter_names):
        if name != BASE_ROW and (not isinstance(name, str) or name not in known):
            raise ValueError(f"adapter_names[{i}]: unknown adapter {_checks.describe(name)}; the network holds "
                             f"{known} (or {BASE_ROW!r} for the base model)")
    merged = sorted(path for path, cell in cells.items() if cell.merged)
    if merged:
        raise ValueError(f"adapter_names: {len(merged)} LoRA cells are merged, e.g. {merged[0]}: a merged weight "
                         "holds one adapter for every row; unmerge them to mix adapters")
    dora = unmixable_cells(net)
    if dora:  # checked before any cell is prepared: a refusal changes nothing
        raise ValueError(f"adapter_names: {len(dora)} LoRA cells are DoRA cells, e.g. {dora[0]}: a DoRA cell "
                         "cannot run rows of different adapters in one batch (its mixed branch would be plain "
                         "LoRA); give every row of a call the same adapter (predict batches rows by adapter)")
    for cell in cells.values():
        cell.set_mix_columns(known)
    rows = np.zeros((batch, max(len(known), 1)), np.float32)
    for i, name in enumerate(adapter_names):
        if name != BASE_ROW:
            rows[i, known.index(name)] = 1.0
    return rows


def unmixable_cells(net):
    """Paths of the LoRA cells that cannot run a mixed batch (DoRA cells), sorted; [] when any mix runs."""
    return sorted(path for path, cell in lora_cells(net).items() if getattr(cell, "use_dora", False))


def _check_row_name(net, name, what):
    if name != BASE_ROW:
        known = list_adapters(net)
        if not isinstance(name, str) or name not in known:
            raise ValueError(f"{what}: unknown adapter {_checks.describe(name)}; the network holds {known} "
                             f"(or {BASE_ROW!r} for the base model)")


@contextlib.contextmanager
def running_adapter(net, name):
    """``with running_adapter(net, name):`` every LoRA cell runs ``name`` (``"__base__"``: none) and the
    active adapters come back after: one adapter for a whole batch without a mix (a DoRA network's way;
    each switch recompiles the cells that change). Refused before any change as set_adapter /
    disable_adapter refuse (an unknown name, merged cells asked to run another adapter)."""
    _check_row_name(net, name, "adapter_names")
    cells = lora_cells(net)
    merged = sorted(path for path, cell in cells.items() if cell.merged)
    if merged and name != DEFAULT_ADAPTER:
        raise ValueError(f"adapter_names: {len(merged)} LoRA cells are merged (their weights hold the 'default' "
                         f"adapter), e.g. {merged[0]}: unmerge them to run {name!r}")
    before = {path: cell.active_adapter for path, cell in cells.items()}
    try:
        for cell in cells.values():
            cell.set_active_adapter(name if name != BASE_ROW and name in cell.adapter_names() else None)
        yield net
    finally:
        for path, cell in cells.items():
            cell.set_active_adapter(before[path])
