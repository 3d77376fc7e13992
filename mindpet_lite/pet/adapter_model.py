"""apply_adapter: put an Adapter or a LowRankAdapter after each dense layer a pet_config names
(``pet_type: adapter`` / ``low_rank_adapter``), then freeze everything but the adapters.

The same four steps as LoRA's (``pet/model.py``), the network changing only in the last two: plan the
targets (``pet/targets.py``: LoRA's matching rule), build one cell per target computing with the target's
own weight and bias Parameters (``AdapterDense.from_dense``), swap the cells in (the adapter parameters are
named ``<layer>.mindpet_delta_adapter...``, the base ones keep their names), freeze all but
``*mindpet_delta_<pet_type>*`` (``freeze_delta``), then freeze_include / freeze_exclude.
"""
import logging

from mindspore import nn

from mindpet_lite import _checks
from mindpet_lite.delta.adapter import AdapterDense
from mindpet_lite.delta.graph_mode import invalidate_compiled_graphs
from mindpet_lite.delta.low_rank_adapter import LowRankAdapterDense
from mindpet_lite.graph.freeze import freeze_delta, trainable_params_report
from mindpet_lite.pet import targets as _targets

logger = logging.getLogger(__name__)

__all__ = ["apply_adapter", "ADAPTER_CELLS"]

ADAPTER_CELLS = {"adapter": AdapterDense, "low_rank_adapter": LowRankAdapterDense}


def apply_adapter(network, config):
    """Apply an AdapterConfig / LowRankAdapterConfig to ``network`` in place; returns the summary
    {'replaced', 'num_replaced', 'trainable', 'total', 'percent'} (also ``network.pet_summary``)."""
    if not isinstance(network, nn.Cell):
        raise TypeError(f"network must be a mindspore.nn.Cell, got {_checks.describe(network)}")
    adapted = [path for path, cell in network.cells_and_names() if isinstance(cell, tuple(ADAPTER_CELLS.values()))]
    if adapted:
        raise ValueError(f"the network already holds {len(adapted)} adapter layers ({', '.join(adapted[:3])}): apply "
                         "the adapters once, with every target in one pet_config")
    found = _targets.plan(network, config)
    if not found:
        raise ValueError(_targets.no_match_message(network, config))
    _targets.check_shared(network, found)
    built = [_build(cell, path, config) for _, _, path, cell in found]
    leaves = set()  # the names the adapter cells add (the layers' own weight and bias keep theirs)
    for (_, _, _, old), new in zip(found, built):
        kept = {id(p) for p in old.get_parameters()}
        leaves.update(local for local, p in new.parameters_and_names() if id(p) not in kept)
    prefixes = _targets.param_prefixes(network, found, leaves)
    for (parent, attr, path, old), new in zip(found, built):
        _targets.swap(parent, attr, old, new, prefixes[path])
    invalidate_compiled_graphs(network)

    freeze_delta(network, config.delta_mark, config.freeze_include, config.freeze_exclude)
    counts = trainable_params_report(network)
    summary = {"replaced": [path for _, _, path, _ in found], "num_replaced": len(found), **counts}
    network.pet_config = config
    network.pet_summary = summary
    logger.info("%s on %d layers (%s%s); trainable %d / %d (%.4f%%)", config.pet_type, len(found),
                ", ".join(summary["replaced"][:4]), ", ..." if len(found) > 4 else "",
                counts["trainable"], counts["total"], counts["percent"])
    return summary


def _build(cell, path, config):
    """The adapter cell for one target; errors name the target."""
    kind = type(cell).__name__
    if type(cell) is not nn.Dense:  # pylint: disable=unidiomatic-typecheck
        raise TypeError(f"target_modules selects {path}, a {type(cell).__module__}.{kind}: pet_type "
                        f"{config.pet_type!r} replaces plain mindspore.nn.Dense layers only; narrow target_modules "
                        "(or add exclude_layers)")
    dtype = cell.weight.dtype
    try:
        return ADAPTER_CELLS[config.pet_type].from_dense(
            cell, param_init_type=config.param_init_type or dtype, compute_dtype=config.compute_dtype or dtype,
            **config.cell_args())
    except (TypeError, ValueError) as err:
        raise type(err)(f"{path} ({kind}): {err}") from err
