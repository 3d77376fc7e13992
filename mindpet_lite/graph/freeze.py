"""Freeze parts of a network by glob patterns, with MindPet's include / exclude semantics.

A parameter name (as `Cell.parameters_and_names()` gives it) matching an include pattern only is
frozen (requires_grad False); matching an exclude pattern only is unfrozen; matching both or neither
is left untouched. Patterns are `fnmatch` globs, case-sensitive.

Each call plans the new requires_grad of every parameter first and changes nothing when the plan is
refused: a freeze that would leave nothing trainable is a ValueError (training would learn nothing);
a pattern that matches no parameter is a warning naming it (usually a typo). Patterns are compiled
once per call, so long pattern lists cost one regex per pattern, not one per pattern and parameter.
"""
import fnmatch
import logging
import re

from mindspore import nn

from mindpet_lite import _checks
from mindpet_lite.delta.lora import LoRADense

logger = logging.getLogger(__name__)

DELTA_MODES = ("lora", "prefixtuning", "adapter", "low_rank_adapter", "bitfit", "ptuning2")


def _check_model(model):
    if not isinstance(model, nn.Cell):
        raise TypeError(f"model must be a mindspore.nn.Cell, got {_checks.describe(model)}")


def _check_patterns(include, exclude):
    if include is not None:
        _checks.check_str_list("include", include)
    if exclude is not None:
        _checks.check_str_list("exclude", exclude)


def _matcher(patterns):
    """{pattern: compiled regex} of a glob list (each glob compiled once; duplicates once)."""
    return {p: re.compile(fnmatch.translate(p)) for p in dict.fromkeys(patterns or ())}


def _plan(state, include, exclude, unmatched):
    """New {name: requires_grad} after one include / exclude pass over ``state``; the patterns that
    matched nothing are added to ``unmatched`` ({pattern: which list})."""
    inc, exc = _matcher(include), _matcher(exclude)
    hit = set()
    out = {}
    for name, trainable in state.items():
        inc_hits = [p for p, rx in inc.items() if rx.match(name)]
        exc_hits = [p for p, rx in exc.items() if rx.match(name)]
        hit.update(inc_hits, exc_hits)
        if inc_hits and not exc_hits:
            trainable = False
        elif exc_hits and not inc_hits:
            trainable = True
        out[name] = trainable
    for which, patterns in (("include", inc), ("exclude", exc)):
        unmatched.update({p: which for p in patterns if p not in hit})
    return out


def _apply(model, plan, unmatched, what):
    """Refuse a plan with nothing trainable, warn about unmatched patterns, then set requires_grad."""
    params = dict(model.parameters_and_names())
    if params and not any(plan.values()):
        raise ValueError(f"{what} would leave no parameter trainable ({len(params)} parameters, all frozen): "
                         "check the patterns (and that the delta cells are in the network)")
    for pattern, which in unmatched.items():
        logger.warning("%s: %s pattern %r matches no parameter", what, which, pattern)
    changed = 0
    for name, trainable in plan.items():
        if params[name].requires_grad != trainable:
            params[name].requires_grad = trainable
            changed += 1
    logger.info("%s: %d parameters changed, %d of %d trainable", what, changed, sum(plan.values()), len(plan))


def _state(model):
    return {name: p.requires_grad for name, p in model.parameters_and_names()}


def freeze_modules(model, include=None, exclude=None):
    """Freeze parameters matching `include`, unfreeze those matching `exclude` (lists of globs)."""
    _check_model(model)
    if include is None and exclude is None:
        raise ValueError("freeze_modules needs include or exclude (a non-empty list of glob strings), "
                         "got both None")
    _check_patterns(include, exclude)
    unmatched = {}
    plan = _plan(_state(model), include, exclude, unmatched)
    _apply(model, plan, unmatched, "freeze_modules")


def freeze_delta(model, mode, include=None, exclude=None):
    """Freeze everything but the delta parameters of `mode` (`*mindpet_delta_<mode>*`; bitfit:
    `*bias`), then apply include / exclude on top."""
    _check_model(model)
    if not isinstance(mode, str) or mode.lower() not in DELTA_MODES:
        raise ValueError(f"mode must be one of {list(DELTA_MODES)} (case-insensitive), "
                         f"got {_checks.describe(mode)}")
    _check_patterns(include, exclude)
    mode = mode.lower()
    keep = "*bias" if mode == "bitfit" else f"*mindpet_delta_{mode}*"
    unmatched = {}
    plan = _plan(_state(model), ["*"], [keep], unmatched)
    unmatched.pop("*", None)
    if unmatched:
        raise ValueError(f"freeze_delta: the network has no {mode} parameters (none matches {keep!r}): "
                         "apply the delta cells first (get_pet_model)")
    if include or exclude:
        plan = _plan(plan, include, exclude, unmatched)
    _apply(model, plan, unmatched, f"freeze_delta({mode!r})")


def freeze_from_config(model, config_path):
    """Freeze from a YAML file holding `freeze: {include: [...], exclude: [...]}`."""
    _check_model(model)
    if not isinstance(config_path, str):
        raise TypeError(f"config_path must be a string path to a YAML file, got {_checks.describe(config_path)}")
    if not config_path:
        raise ValueError("config_path must be a non-empty path to a YAML file, got ''")
    content = _checks.load_mapping(config_path, "freeze config")
    if "freeze" not in content:
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
    if isinstance(names, (str, bytes)) or not all(isinstance(n, str) for n in names):
        raise TypeError(f"names must be a collection of parameter names (e.g. a list or a dict), "
                        f"got {_checks.describe(names)}")
    names = set(names)
    if not names:
        raise ValueError("names is empty: set_trainable_params would leave no parameter trainable")
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
