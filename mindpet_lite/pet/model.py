"""get_pet_model: put LoRA on the layers a pet_config names, then freeze the rest.

Four steps, and the network changes only in the last two:

1. plan: walk the cell tree and collect the targets. A child cell is a target when
   `re.match(target_modules, attribute_name)` (MindFormers' rule: `wq`) or
   `re.fullmatch(target_modules, dotted_path)` (`model.layers.3.attention.wq`, for layer-selective
   patterns). A child matching an exclude_layers pattern by the same two rules is skipped with its
   subtree. A target is not descended into. The variant keys (rules in `pet/variants.py`): a target
   outside layers_to_transform is dropped, a modules_to_save cell is never a target (its parameters
   stay trainable), and each layer takes its own rank / alpha from rank_pattern / alpha_pattern.
2. build: one LoRA cell per target, sharing the target's weight / bias Parameter objects. Every
   error (a target that is not a dense layer, zero matches, a dtype or init that does not fit a
   layer) is raised here, naming the layer, so a failed call leaves the network as it was.
   `plan_lora` stops here: its `LoraPlan` names the parameters the network will have (load_adapter
   checks a file against them before anything changes) and applies steps 3 and 4.
3. swap: put the new cells in place. MindSpore renames a cell's parameters on assignment to
   `<attribute>.<name>`; the base weight and bias get their original names back and the LoRA
   factors are named `<layer>.mindpet_delta_lora_a` / `_b` (see `pet.targets.param_prefixes`).
4. freeze everything but the LoRA factors, then freeze_include / freeze_exclude (MindPet globs).

`init_lora_weights: pissa / olora` changes the base weights (they keep the residual): that happens
between build and swap, after every layer was built, each layer checked before any is changed.
"""
import dataclasses
import logging

import numpy as np
from mindspore import nn
from mindspore.common.initializer import Normal

from mindpet_lite import _checks
from mindpet_lite.delta.graph_mode import invalidate_compiled_graphs
from mindpet_lite.delta.lora import LORA_A, LORA_B, LoRADense
from mindpet_lite.graph.freeze import freeze_delta, trainable_params_report
from mindpet_lite.integrations import mcore as _mcore
from mindpet_lite.integrations import mindformers as _mf
from mindpet_lite.pet import variants
from mindpet_lite.pet.adapter_model import apply_adapter
from mindpet_lite.pet.config import load_pet_config
from mindpet_lite.pet.targets import check_shared as _check_shared
from mindpet_lite.pet.targets import param_prefixes
from mindpet_lite.pet.targets import no_match_message as _no_match_message
from mindpet_lite.pet.targets import plan as _plan
from mindpet_lite.pet.targets import swap as _swap
from mindpet_lite.pet.prefix_model import apply_prefix

logger = logging.getLogger(__name__)

_FLOAT_FLAGS = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}


def get_pet_model(network, pet_config):
    """Apply the pet_config's method to `network` in place and return it: LoRA, (pet_type adapter /
    low_rank_adapter) an adapter after every targeted dense layer (``pet/adapter_model.py``), or (pet_type
    ptuning2 / prefixtuning) a trainable prefix of every attention layer (``pet/prefix_model.py``).

    Args:
        network (nn.Cell): the model; its targeted layers must be `nn.Dense` or (when mindformers
            is loaded) `mindformers.modules.layers.Linear` or the mcore `ColumnParallelLinear` /
            `RowParallelLinear` / `LinearNoTP` (`integrations.mcore`).
        pet_config: a `LoraConfig`, a dict of pet_config keys, or a YAML path (the block alone, a
            `pet_config:` mapping, or a whole run YAML).

    Returns:
        The same network, with `network.pet_config` (the LoraConfig used) and `network.pet_summary`
        (see `apply_lora`) set.

    Raises:
        TypeError: `network` is not a Cell; a targeted cell is not a dense layer; a bad config value.
        ValueError: a bad config value; target_modules matches no layer (the message lists dense
            layers that exist); a targeted layer is already a LoRADense.
        FileNotFoundError: a YAML path that does not exist.
    """
    if not isinstance(network, nn.Cell):
        raise TypeError(f"network must be a mindspore.nn.Cell, got {_checks.describe(network)}")
    config = load_pet_config(pet_config)
    _APPLY[config.pet_type](network, config)
    return network


def apply_lora(network, pet_config):
    """`get_pet_model`, returning the summary: {'replaced': [paths], 'num_replaced', 'trainable',
    'total', 'percent'} (parameter counts, percent trainable)."""
    return plan_lora(network, pet_config).apply()


def plan_lora(network, pet_config, extend=False):
    """Steps 1 and 2 of `get_pet_model`: every check done and every LoRA cell built, the network not
    changed yet. The :class:`LoraPlan` tells the parameters the network will have (so that a caller
    can check a file against them first) and applies the change. ``extend``: the network may already
    hold LoRA layers (the plan then only adds cells, see :meth:`LoraPlan.swap`)."""
    if not isinstance(network, nn.Cell):
        raise TypeError(f"network must be a mindspore.nn.Cell, got {_checks.describe(network)}")
    config = load_pet_config(pet_config)
    if config.pet_type != "lora":
        raise ValueError(f"plan_lora takes a LoRA pet_config, got pet_type {config.pet_type!r}: use get_pet_model")
    adapted = [path for path, cell in network.cells_and_names() if isinstance(cell, LoRADense)]
    if adapted and not extend:
        raise ValueError(f"the network already holds {len(adapted)} LoRA layers ({', '.join(adapted[:3])}"
                         f"{', ...' if len(adapted) > 3 else ''}): apply LoRA once, with every target in one "
                         "pet_config, so that its pet_config describes the whole adapter")

    saved = _plan_saved(network, config)
    targets = _plan(network, config)
    if not targets:
        raise ValueError(_no_match_message(network, config))
    _check_layers(network, targets, config)
    _check_shared(network, targets)
    built = [_build(cell, path, config) for _, _, path, cell in targets]
    return LoraPlan(network, config, targets, built, saved)


class LoraPlan:
    """LoRA cells built for a network and not yet in it (:func:`plan_lora`)."""

    def __init__(self, network, config, targets, built, saved):  # pylint: disable=too-many-arguments
        self.network, self.config, self.saved = network, config, saved
        self._targets, self._built = targets, built

    def lora_cells(self):
        """{path: LoRADense} the plan puts in."""
        return {path: new for (_, _, path, _), new in zip(self._targets, self._built)}

    def parameters(self):
        """{name: Parameter} the network will have after the swap (the names of
        ``parameters_and_names``: the replaced layers' by their new cells')."""
        cells = self.lora_cells()
        out = {name: p for name, p in self.network.parameters_and_names()
               if not any(name.startswith(path + ".") for path in cells)}
        for path, new in cells.items():
            out.update({f"{path}.{local}": p for local, p in new.parameters_and_names()})
        return out

    def swap(self):
        """Put the built cells in place (PiSSA / OLoRA first take their factors from the weights);
        freezing and the network's pet_config are left as they are."""
        _init_from_weights(self._built, self._targets, self.config)
        prefixes = param_prefixes(self.network, self._targets, (LORA_A, LORA_B))
        for (parent, attr, path, old), new in zip(self._targets, self._built):
            _swap(parent, attr, old, new, prefixes[path])
        invalidate_compiled_graphs(self.network)  # a network compiled before the swap must not reuse its graph

    def apply(self):
        """`get_pet_model`'s change: swap, freeze all but the LoRA factors (and modules_to_save), attach
        ``pet_config`` / ``pet_summary``. Returns the summary."""
        network, config, targets = self.network, self.config, self._targets
        self.swap()
        freeze_delta(network, "lora", config.freeze_include, config.freeze_exclude)
        for cell in self.saved.values():  # modules_to_save: trained in full
            for param in cell.get_parameters():
                param.requires_grad = True
        counts = trainable_params_report(network)
        summary = {"replaced": [path for _, _, path, _ in targets], "num_replaced": len(targets), **counts}
        network.pet_config = config
        network.pet_summary = summary
        logger.info("LoRA (rank %d, alpha %s, scaling %g) on %d layers (%s%s); trainable %d / %d (%.4f%%)",
                    config.lora_rank, config.lora_alpha, config.scaling, len(targets),
                    ", ".join(summary["replaced"][:4]), ", ..." if len(targets) > 4 else "",
                    counts["trainable"], counts["total"], counts["percent"])
        return summary


# ---- 1. plan ----------------------------------------------------------------------------------
def _plan_saved(network, config):
    """{path: cell} of the modules_to_save (outermost matches); a name matching no cell is an error."""
    names = config.modules_to_save or []
    saved, hit = {}, set()
    for path, cell in network.cells_and_names():
        if path and config.saves_module(path) and not any(path.startswith(p + ".") for p in saved):
            saved[path] = cell
            hit.update(n for n in names if path.endswith(n))
    missing = [n for n in names if n not in hit]
    if missing:
        raise ValueError(f"modules_to_save {missing} matches no cell (a cell is saved when its dotted path ends "
                         f"with the name); cells: {_checks.short_list([p for p, _ in network.cells_and_names() if p])}")
    return saved


def _check_layers(network, targets, config):
    """Every layers_to_transform index selects a target; unused rank / alpha patterns are logged."""
    paths = [path for _, _, path, _ in targets]
    if config.layers_to_transform is not None:
        found = {variants.layer_index(p, config.layers_pattern) for p in paths}
        missing = [i for i in config.layers_to_transform if i not in found]
        if missing:
            every = _plan(network, dataclasses.replace(config, layers_to_transform=None, layers_pattern=None))
            indices = {variants.layer_index(path, config.layers_pattern) for _, _, path, _ in every}
            raise ValueError(f"layers_to_transform {missing} selects no target layer: target_modules matches layers "
                             f"{sorted(i for i in indices if i is not None)} (layers_pattern={config.layers_pattern!r})")
    for key in ("rank_pattern", "alpha_pattern"):
        for pattern in getattr(config, key):
            if not any(variants.pattern_key([pattern], p) for p in paths):
                logger.warning("%s key %r matches no LoRA target", key, pattern)


# ---- 2. build ---------------------------------------------------------------------------------
def _float_flag(cell):
    """The dtype name a `Cell.to_float` call left on the cell, or None."""
    flags = cell.get_flags()
    for flag, name in _FLOAT_FLAGS.items():
        if flags.get(flag):
            return name
    return None


def _build(cell, path, config):
    """The LoRA cell for one target; errors name the target."""
    kind = type(cell).__name__
    if isinstance(cell, LoRADense):
        raise ValueError(f"target_modules selects {path}, which is already a {kind}: LoRA is applied "
                         "once; narrow target_modules or start from the base network")
    lora = dict(lora_rank=config.rank_for(path), lora_alpha=config.alpha_for(path),  # rank/alpha_pattern
                lora_dropout=config.lora_dropout, lora_a_init=config.lora_a_init, lora_b_init=config.lora_b_init, use_rslora=config.use_rslora)
    if config.init_lora_weights == "gaussian":  # PEFT's: A ~ N(0, (1/r)^2), B = 0, with the layer's own r
        lora.update(lora_a_init=Normal(sigma=1.0 / lora["lora_rank"]), lora_b_init="zeros")
    flag = _float_flag(cell)
    try:
        if isinstance(cell, nn.Dense):
            new = LoRADense.from_dense(
                cell, param_init_type=config.param_init_type or cell.weight.dtype,
                compute_dtype=config.compute_dtype or flag or cell.weight.dtype, use_dora=config.use_dora, **lora)
        elif _mf.is_linear(cell) and (config.use_dora or config.weight_init is not None):
            raise TypeError(f"use_dora={config.use_dora} / init_lora_weights={config.init_lora_weights!r} are "
                            f"supported on mindspore.nn.Dense layers; {path} is a mindformers Linear (use the "
                            "built-in Llama, or plain LoRA there)")
        elif _mf.is_linear(cell):
            new = _mf.LoRALinear.from_linear(cell, param_init_type=config.param_init_type,
                                             compute_dtype=config.compute_dtype, **lora)
        elif _mcore.is_parallel_linear(cell):
            if config.weight_init is not None and (getattr(cell, "skip_weight_param_allocation", False)
                                                   or not cell.transpose_b):
                raise ValueError(f"init_lora_weights={config.init_lora_weights!r} changes the base weight in its "
                                 f"[out, in] layout; {path} has no weight of its own (skip_weight_param_allocation) "
                                 "or stores it [in, out] (transpose_b=False)")
            new = _mcore.lora_class_for(cell).from_layer(
                cell, param_init_type=config.param_init_type, compute_dtype=config.compute_dtype or flag,
                use_dora=config.use_dora, **lora)
        else:
            raise TypeError(f"target_modules selects {path}, a {type(cell).__module__}.{kind}: only "
                            "mindspore.nn.Dense, mindformers.modules.layers.Linear and the mcore "
                            "ColumnParallelLinear / RowParallelLinear / LinearNoTP layers can take "
                            "LoRA; narrow target_modules (or add exclude_layers)")
    except (TypeError, ValueError) as err:
        if path in str(err):
            raise
        raise type(err)(f"{path} ({kind}): {err}") from err
    if flag is not None:  # keep the input casts a to_float() put on the replaced layer
        new.to_float(_checks.FLOAT_DTYPES[flag])
    return new


def _init_from_weights(built, targets, config):
    """PiSSA / OLoRA: every layer is checked first, then the factors are taken from the weights."""
    if config.weight_init is None:
        return
    method, niter = config.weight_init
    for new, (_, _, path, _) in zip(built, targets):
        small = min(new.in_channels, new.out_channels)
        if config.lora_rank > small:
            raise ValueError(f"init_lora_weights={config.init_lora_weights!r} needs lora_rank <= min(in, out) of every "
                             f"target; {path} is {new.in_channels} -> {new.out_channels}, lora_rank={config.lora_rank}")
        if not np.isfinite(new.weight.asnumpy()).all():
            raise ValueError(f"init_lora_weights={config.init_lora_weights!r}: the weight of {path} holds NaN / Inf")
    for new in built:
        new.init_from_weight(method, niter)


# pet_type -> how it is applied (pet/config.py's PET_CONFIGS has the matching config classes)
_APPLY = {"lora": apply_lora, "adapter": apply_adapter, "low_rank_adapter": apply_adapter,
          "ptuning2": apply_prefix, "prefixtuning": apply_prefix}
