"""Freeze parts of a network by glob patterns, with MindPet's include / exclude semantics.

A parameter name (as `Cell.parameters_and_names()` gives it) matching an include pattern only is
frozen (requires_grad False); matching an exclude pattern only is unfrozen; matching both or neither
is left untouched. Patterns are `fnmatch` globs, case-sensitive.
"""
import fnmatch
import logging
import os

import yaml
from mindspore import nn

from mindpet_lite import _checks
from mindpet_lite.delta.lora import LoRADense

logger = logging.getLogger(__name__)

DELTA_MODES = ("lora", "prefixtuning", "adapter", "low_rank_adapter", "bitfit", "ptuning2")


def _check_model(model):
    if not isinstance(model, nn.Cell):
        raise TypeError(f"model must be a mindspore.nn.Cell, got {_checks.describe(model)}")


def _matches(name, patterns):
    return patterns is not None and any(fnmatch.fnmatchcase(name, p) for p in patterns)


def freeze_modules(model, include=None, exclude=None):
    """Freeze parameters matching `include`, unfreeze those matching `exclude` (lists of globs)."""
    _check_model(model)
    if include is None and exclude is None:
        raise ValueError("freeze_modules needs include or exclude (a non-empty list of glob strings), "
                         "got both None")
    if include is not None:
        _checks.check_str_list("include", include)
    if exclude is not None:
        _checks.check_str_list("exclude", exclude)
    frozen = unfrozen = 0
    for name, param in model.parameters_and_names():
        inc, exc = _matches(name, include), _matches(name, exclude)
        if inc and not exc:
            param.requires_grad = False
            frozen += 1
        elif exc and not inc:
            param.requires_grad = True
            unfrozen += 1
    logger.info("freeze_modules: include=%s exclude=%s -> %d frozen, %d unfrozen",
                include, exclude, frozen, unfrozen)


def freeze_delta(model, mode, include=None, exclude=None):
    """Freeze everything but the delta parameters of `mode` (`*mindpet_delta_<mode>*`; bitfit:
    `*bias`), then apply include / exclude on top."""
    _check_model(model)
    if not isinstance(mode, str) or mode.lower() not in DELTA_MODES:
        raise ValueError(f"mode must be one of {list(DELTA_MODES)} (case-insensitive), "
                         f"got {_checks.describe(mode)}")
    if include is not None:
        _checks.check_str_list("include", include)
    if exclude is not None:
        _checks.check_str_list("exclude", exclude)
    mode = mode.lower()
    keep = "*bias" if mode == "bitfit" else f"*mindpet_delta_{mode}*"
    freeze_modules(model, include=["*"], exclude=[keep])
    if include or exclude:
        freeze_modules(model, include, exclude)


def freeze_from_config(model, config_path):
    """Freeze from a YAML file holding `freeze: {include: [...], exclude: [...]}`."""
    _check_model(model)
    if not isinstance(config_path, str):
        raise TypeError(f"config_path must be a string path to a YAML file, got {_checks.describe(config_path)}")
    if not config_path:
        raise ValueError("config_path must be a non-empty path to a YAML file, got ''")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"config_path: no such file: {config_path}")
    with open(config_path, encoding="utf-8") as f:
        content = yaml.safe_load(f)
    if not isinstance(content, dict) or "freeze" not in content:
        raise ValueError(f"{config_path}: missing required key 'freeze' (a mapping with include and/or exclude)")
    spec = content["freeze"]
    if not isinstance(spec, dict):
        raise ValueError(f"{config_path}: key 'freeze' must be a mapping with include and/or exclude, "
                         f"got {_checks.describe(spec)}")
    for key in spec:
        if key not in ("include", "exclude"):
            raise ValueError(f"{config_path}: key 'freeze.{key}' is not allowed; 'freeze' takes only "
                             "'include' and 'exclude'")
    freeze_modules(model, spec.get("include"), spec.get("exclude"))


def lora_cells(net):
    """{cell path: LoRADense} of a network."""
    _check_model(net)
    return {name: cell for name, cell in net.cells_and_names() if isinstance(cell, LoRADense)}


def get_adapter_params(net):
    """{name: Parameter} of the LoRA factors of a network, as its LoRA cells report them (the
    names are the network's parameter names)."""
    held = {id(p) for cell in lora_cells(net).values() for p in cell.adapter_parameters().values()}
    return {name: p for name, p in net.parameters_and_names() if id(p) in held}


def set_trainable_params(net, names):
    """requires_grad True for exactly the parameters named in `names`, False for all others."""
    _check_model(net)
    names = set(names)
    known = {name for name, _ in net.parameters_and_names()}
    missing = sorted(names - known)
    if missing:
        raise KeyError(f"set_trainable_params: no parameters named {missing[:5]}")
    for name, param in net.parameters_and_names():
        param.requires_grad = name in names


def trainable_params_report(net):
    """Count total and trainable parameters, log them, return {'total', 'trainable', 'percent'}."""
    _check_model(net)
    total = trainable = 0
    for _, param in net.parameters_and_names():
        total += param.size
        if param.requires_grad:
            trainable += param.size
    percent = 100.0 * trainable / total if total else 0.0
    logger.info("trainable params: %d / %d (%.4f%%)", trainable, total, percent)
    return {"total": total, "trainable": trainable, "percent": percent}
