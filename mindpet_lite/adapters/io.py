"""Adapter files onto networks and back: save the trainable weights of a LoRA network, read an adapter
(ours, MindFormers', mcore / PEFT-style names, a HF PEFT directory), load it onto a network, and
gather per-rank saves into one file (``adapters.sharded``).

The file formats and safe writes are ``_files``'; the metadata and its LoraConfig are
``adapters.metadata``'s; the name translations are ``adapters.names``'. Everything is checked before
anything is assigned or written.
"""
import dataclasses
import logging
import math
import os

from mindspore import Tensor, nn

from mindpet_lite import _checks, _files
from mindpet_lite.adapters import metadata as _meta
from mindpet_lite.adapters.mutated_init import convert_weight_init
from mindpet_lite.adapters.named import load_named_adapter, named_adapter_tensors
from mindpet_lite.adapters.names import LORA_MARK, is_lora_name, is_state_key, resolve_names
from mindpet_lite.adapters.peft import CONFIG_NAME as PEFT_CONFIG_NAME
from mindpet_lite.adapters.peft import read_peft_adapter
from mindpet_lite.adapters.prefix import prefix_metadata, prefix_tensors_required
from mindpet_lite.delta.lora import LORA_A, LORA_B
from mindpet_lite.delta.lora_adapters import DEFAULT_ADAPTER
from mindpet_lite.graph.adapters import extra_adapter_params, first_adapter_cells, list_adapters
from mindpet_lite.graph.freeze import get_adapter_params, lora_cells
from mindpet_lite.pet.model import plan_lora

logger = logging.getLogger(__name__)

__all__ = ["save_adapter", "load_adapter", "read_adapter", "adapter_parameters"]


# ------------------------------------------------------------------------------------------------
# save
# ------------------------------------------------------------------------------------------------
def adapter_parameters(net):
    """``{name: Parameter}`` the first adapter holds: its LoRA factors plus every trainable parameter
    (other named adapters' factors are not part of it)."""
    if not isinstance(net, nn.Cell):
        raise TypeError(f"net must be a mindspore.nn.Cell, got {_checks.describe(net)}")
    lora = _first_adapter_params(net)
    named = extra_adapter_params(net)
    return {name: p for name, p in net.parameters_and_names()
            if name in lora or (p.requires_grad and name not in named)}


def save_adapter(net, path, format=None, config=None, base_fingerprint=None, overwrite=False,  # pylint: disable=redefined-builtin
                 adapter_name=None):
    """Save the adapter of a LoRA network: its LoRA parameters and anything left trainable.

    Args:
        net (nn.Cell): the network after ``get_pet_model`` (or with LoRADense cells).
        path (str): a ``.ckpt`` or ``.safetensors`` file (not a directory); written atomically.
        format (str): 'ckpt' or 'safetensors'; default from the suffix, which it must agree with.
        config: a LoraConfig or pet_config dict recorded in the metadata; None follows the rule of
            :func:`mindpet_lite.adapters.metadata.adapter_config` (the net's own config, else one
            described from its LoRA cells). Checked against the cells (rank and scaling). A
            PiSSA / OLoRA network is saved as a rank-2r plain LoRA of the original base
            (``adapters.mutated_init``): load it onto a network built with its pet_config.
        base_fingerprint: None computes it from ``net``; a dict from
            :func:`~mindpet_lite.adapters.metadata.base_fingerprint` is used as given (e.g. for a
            network whose base weights were dropped).
        overwrite (bool): replace an existing ``path`` (otherwise FileExistsError).
        adapter_name (str): save this named adapter (``adapters/named.py``) in the same single-adapter
            format (the first adapter's parameter names; its LoRA factors only); None or "default":
            the first adapter.

    Returns:
        The metadata dict written.

    Raises:
        TypeError / ValueError: bad arguments, an empty adapter (nothing LoRA or trainable: a net without
            LoRA cells, or parameters sharded away), a config that contradicts the cells, NaN / Inf
            weights.
        IsADirectoryError: ``path`` is a directory.
        FileExistsError: ``path`` exists and ``overwrite`` is False.
    """
    fmt = _files.check_output_path(path, format)
    _files.check_new_output(path, overwrite=overwrite, what="path")
    if adapter_name not in (None, DEFAULT_ADAPTER):
        tensors, lora_config = named_adapter_tensors(net, adapter_name, config)
        return _write(net, path, fmt, tensors, lora_config, base_fingerprint)
    params = adapter_parameters(net)
    if not params:
        raise ValueError("refusing to save an empty adapter: the network has no LoRA parameters and nothing "
                         "trainable (was get_pet_model applied?)")
    tensors = {}
    for name, param in params.items():
        array = _files.to_numpy(param)
        if array.size == 0:
            raise ValueError(f"refusing to save an empty adapter: {name} has no elements (shape {list(array.shape)}); "
                             "under model parallelism gather the parameters first")
        tensors[name] = array
    _checks.check_finite_arrays(f"save_adapter {path}", tensors)
    lora_config = _meta.adapter_config(net, config)
    started = lora_config
    tensors, lora_config = convert_weight_init(net, tensors, lora_config)  # PiSSA / OLoRA: plain LoRA of W
    extra = {}
    if prefix_metadata(net) is not None:  # what an export needs without the model
        extra["prefix"] = prefix_metadata(net)
    if started is not None and lora_config is not started:  # where the rank-2r pairs came from
        extra["converted_from"] = {key: started.to_dict()[key] for key in ("init_lora_weights", "lora_rank", "lora_alpha")}
    return _write(net, path, fmt, tensors, lora_config, base_fingerprint, extra)


def _write(net, path, fmt, tensors, lora_config, base_fingerprint, extra=None):  # pylint: disable=too-many-arguments
    _checks.check_finite_arrays(f"save_adapter {path}", tensors)
    extra = extra or {}
    # names and shapes only: the same for a PiSSA / OLoRA base that holds the residual
    fingerprint = base_fingerprint if base_fingerprint is not None else _meta.base_fingerprint(net)
    layout = _meta.mcore_layout(net, tensors)
    if layout is not None:  # how linear_qkv / linear_fc1 pack their rows: export to PEFT splits by it
        extra = {**extra, "mcore_layout": layout}
    meta = _meta.build_metadata(lora_config, fingerprint, weight_layout=_meta.weight_layout(net), **extra)
    _meta.write_adapter_file(tensors, path, meta, fmt)
    n_lora = sum(LORA_MARK in n for n in tensors)
    logger.info("save_adapter: %d LoRA + %d other tensors -> %s", n_lora, len(tensors) - n_lora, path)
    return meta


# ------------------------------------------------------------------------------------------------
# read / load
# ------------------------------------------------------------------------------------------------
def read_adapter(path):
    """Read an adapter file (ours, MindFormers', mcore / PEFT-style names) or a HF PEFT directory.

    Returns:
        ``(tensors, metadata)``: ``{name: numpy array}`` with the file's names, and the metadata dict
        (``{}`` for files without mindpet_lite metadata). A PEFT directory is converted: built-in Llama
        names and a metadata with its pet_config.
    """
    _checks.check_str("path", path)
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, PEFT_CONFIG_NAME)):
        return read_peft_adapter(path)
    return _meta.read_adapter_file(path)


def load_adapter(net, path, strict=True, adapter_name=None):
    """Load an adapter file onto a network, checking everything before assigning anything.

    Accepts files written by :func:`save_adapter`, MindFormers checkpoints holding
    ``...mindpet_delta_lora_a/_b`` (other entries, e.g. base weights and optimizer states, are ignored),
    mcore / PEFT names (``X.lora_A.weight``), a HF PEFT directory, and names differing from the
    network's by a prefix when the match is unique.

    Args:
        net (nn.Cell): the LoRA network (same targets, rank and scaling as the adapter), or a network
            without LoRA cells: then the file's own pet_config (its metadata, or a PEFT directory's
            adapter_config.json) is applied first, as ``get_pet_model`` does (DoRA, rank / alpha
            patterns, layers_to_transform, modules_to_save; a PiSSA / OLoRA start is built plain: the
            factors are loaded), checked against the file before the network changes (PEFT's
            ``PeftModel.from_pretrained(base, path)``).
        path (str): the adapter file or PEFT directory.
        strict (bool): True: every adapter key must match a parameter and every LoRA parameter of the
            network must be in the adapter; the base fingerprint and the scaling must agree.
            False: missing / unexpected keys and fingerprint or scaling differences are logged.
            Shape mismatches are errors either way.
        adapter_name (str): add the file as a new named adapter beside the ones the network holds
            (``adapters/named.py``: its own rank and alpha; a layer it targets without a LoRADense gets
            one, where the other adapters add nothing; on a network without LoRA cells the network is
            frozen and this adapter made active, as PEFT's ``from_pretrained(..., adapter_name=)``).
            None or "default": assign the first adapter, as always.

    Returns:
        The adapter's metadata dict (``{}`` for files without one).

    Raises:
        ValueError: missing / unexpected / ambiguous keys (listed), shape or rank mismatch (named),
            another base model, another scaling, a merged LoRA cell; the network is unchanged.
    """
    if not isinstance(net, nn.Cell):
        raise TypeError(f"net must be a mindspore.nn.Cell, got {_checks.describe(net)}")
    _checks.check_bool("strict", strict)
    tensors, meta = read_adapter(path)
    if adapter_name not in (None, DEFAULT_ADAPTER):
        _check_same_base(net, meta, path, strict)
        return load_named_adapter(net, tensors, meta, path, adapter_name, strict)
    if not _meta.is_ours(meta):
        dropped = [k for k in tensors if not is_lora_name(k) or is_state_key(k)]
        tensors = {k: v for k, v in tensors.items() if k not in set(dropped)}
        if dropped:
            logger.info("load_adapter: %s: ignoring %d non-LoRA entries (base weights, optimizer states)",
                        path, len(dropped))
        if not tensors:
            raise ValueError(f"{path} holds no LoRA weights (names with mindpet_delta_lora_a/_b or lora_A/lora_B)")
    _check_first_adapter_exists(net, path)
    base_first = not lora_cells(net)  # another base would fail the plan with a less telling message
    if base_first:
        _check_same_base(net, meta, path, strict)
    plan = _plan_from_file(net, meta)
    if plan is None:
        params, cells = dict(net.parameters_and_names()), first_adapter_cells(net)
        held = (set(_first_adapter_params(net)) | set(_saved_params(net)) | set(_delta_params(net))
                | prefix_tensors_required(net))
    else:  # a plain network: the LoRA cells the file's pet_config describes, checked before they go in
        params, cells = plan.parameters(), plan.lora_cells()
        ids = {id(p) for cell in cells.values() for p in cell.adapter_parameters().values()}
        ids |= {id(p) for cell in plan.saved.values() for p in cell.get_parameters()}
        held = {name for name, p in params.items() if id(p) in ids}
    mapping = _fit(tensors, path, strict, params, held, plan is None and not cells)
    if not base_first:
        _check_same_base(net, meta, path, strict)
    _check_cells(cells, mapping, meta, path, strict)
    _checks.check_finite_arrays(f"load_adapter {path}", {key: tensors[key] for key in mapping})

    new_data = {target: Tensor(tensors[key]).astype(params[target].dtype) for key, target in mapping.items()}
    if plan is not None:
        plan.apply()
        logger.info("load_adapter: %s: LoRA applied from its pet_config (%d layers)", path, len(cells))
    for target, data in new_data.items():
        params[target].set_data(data)
    logger.info("load_adapter: %d tensors from %s", len(new_data), path)
    return meta


def _check_first_adapter_exists(net, path):
    """The first adapter cannot come after named ones on a network that had no LoRA cells: their cells
    hold a placeholder first adapter (rank 1, B = 0) that a file of another rank cannot fill, and the
    file's other targets would need cells built beside them. Refused before any change."""
    cells = lora_cells(net)
    if cells and not first_adapter_cells(net):
        named = [name for name in list_adapters(net) if name != DEFAULT_ADAPTER]
        raise ValueError(f"load_adapter {path}: the network's LoRA cells were built for the named adapter(s) "
                         f"{named} and hold no first adapter ('default'); load the first adapter before the "
                         "named ones (or load this one with adapter_name=)")


def build_config(config):
    """The LoraConfig to build a network with before loading an adapter of ``config``: its own, but a
    PiSSA / OLoRA start (which rewrites the base weights) is a plain one (the factors are loaded)."""
    if config.weight_init is None:
        return config
    return dataclasses.replace(config, init_lora_weights=True)


def _plan_from_file(net, meta):
    """The get_pet_model plan of the file's pet_config for a network without LoRA cells, else None."""
    config = _meta.lora_config(meta)
    if config is None or lora_cells(net):
        return None
    return plan_lora(net, build_config(config))


def _fit(tensors, path, strict, params, held, bare):
    """{file key: network parameter name} after checking names and shapes (``held``: the names the
    adapter must cover; ``bare``: the network has no LoRA cells and the file no pet_config)."""
    mapping, unexpected, ambiguous = resolve_names(tensors, params)
    if ambiguous:
        detail = "; ".join(f"{k} -> {v}" for k, v in sorted(ambiguous.items())[:8])
        raise ValueError(f"{path}: adapter keys match the network ambiguously: {detail}")
    missing = sorted(held - set(mapping.values()))
    problems = []
    if missing:
        problems.append(f"missing keys (LoRA parameters of the network not in the adapter, {len(missing)}): "
                        f"{_checks.short_list(missing)}")
    if unexpected:
        hint = (" (the network has no LoRA cells and the file records no pet_config: apply get_pet_model with "
                "the adapter's config first)") if bare else ""
        problems.append(f"unexpected keys (adapter keys with no parameter in the network, {len(unexpected)}): "
                        f"{_checks.short_list(unexpected)}{hint}")
    if problems and strict:
        raise ValueError(f"{path} does not fit the network: " + "; ".join(problems))
    for text in problems:
        logger.warning("load_adapter (strict=False): %s: %s", path, text)

    shape_errors = []
    for key, target in mapping.items():
        have, want = tuple(tensors[key].shape), tuple(params[target].shape)
        if have != want:
            hint = ""
            if target.endswith(LORA_A) and len(have) == 2 and len(want) == 2:
                hint = f" (adapter rank {have[0]}, network rank {want[0]})" if have[0] != want[0] else ""
            elif target.endswith(LORA_B) and len(have) == 2 and len(want) == 2:
                hint = f" (adapter rank {have[1]}, network rank {want[1]})" if have[1] != want[1] else ""
            shape_errors.append(f"{target}: adapter {list(have)} vs network {list(want)}{hint}")
    if shape_errors:
        raise ValueError(f"{path}: shape mismatch for {len(shape_errors)} parameters (another rank or "
                         f"architecture?): " + "; ".join(shape_errors[:8]))
    return mapping


def _check_same_base(net, meta, path, strict):
    saved = meta.get("base_fingerprint")
    if not isinstance(saved, dict) or "sha256" not in saved:
        return
    mine = _meta.base_fingerprint(net)
    if saved["sha256"] == mine["sha256"]:
        return
    text = (f"{path} was saved from another base model: {saved.get('params')} base parameters / "
            f"{saved.get('numel')} values (sha256 {saved['sha256'][:12]}), this network has {mine['params']} / "
            f"{mine['numel']} (sha256 {mine['sha256'][:12]})")
    if strict:
        raise ValueError(text + "; pass strict=False to load anyway")
    logger.warning("load_adapter (strict=False): %s", text)


def _first_adapter_params(net):
    """get_adapter_params without the placeholders of cells added for named adapters."""
    ids = {id(p) for cell in first_adapter_cells(net).values() for p in cell.adapter_parameters().values()}
    return {name: p for name, p in get_adapter_params(net).items() if id(p) in ids}


def _saved_params(net):
    """{name: Parameter} of the cells the network's pet_config lists in modules_to_save."""
    config = getattr(net, "pet_config", None)
    if not getattr(config, "modules_to_save", None):
        return {}
    held = {id(p) for path, cell in net.cells_and_names() if path and config.saves_module(path)
            for p in cell.get_parameters()}
    return {name: p for name, p in net.parameters_and_names() if id(p) in held}


def _delta_params(net):
    """{name: Parameter} of the delta cells of a network built by another method than LoRA (its pet_config's
    ``delta_mark``: the adapters' ``mindpet_delta_adapter...``), which an adapter file must hold."""
    mark = getattr(getattr(net, "pet_config", None), "delta_mark", "lora")
    if mark == "lora":
        return {}
    return {name: p for name, p in net.parameters_and_names() if f"mindpet_delta_{mark}" in name}


def _check_cells(cells, mapping, meta, path, strict):
    targets = set(mapping.values())
    config = _meta.lora_config(meta)
    for name, cell in cells.items():
        if f"{name}.{LORA_A}" not in targets and f"{name}.{LORA_B}" not in targets:
            continue
        if cell.merged:
            raise ValueError(f"{name} is merged: unmerge() it before loading an adapter onto it")
        # each layer's own scaling (rank_pattern / alpha_pattern), else the file's one number
        scaling = config.scaling_for(name) if config is not None else _meta.adapter_scaling(meta)
        if scaling is not None and not math.isclose(cell.scaling, scaling, rel_tol=1e-6):
            text = (f"{path} was trained with scaling {scaling:g} but {name} computes with {cell.scaling:g} "
                    f"(lora_alpha={cell.lora_alpha}, rank={cell.lora_rank}, rslora={cell.use_rslora}); build the "
                    "network with pet_config_from_metadata(metadata)")
            if strict:
                raise ValueError(text)
            logger.warning("load_adapter (strict=False): %s", text)
