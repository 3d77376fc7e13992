"""The variant keys of a pet_config that HF PEFT users know, their checks and PEFT's matching rules.

* ``rank_pattern`` / ``alpha_pattern``: ``{regex: rank}`` / ``{regex: alpha}``. A layer takes the value of
  the FIRST key (in the mapping's order) that matches the end of its dotted path at a dot boundary,
  ``re.match(rf"(.*\\.)?({key})$", path)`` (PEFT's ``get_pattern_key``): ``wq`` takes every
  ``...attention.wq``, ``layers\\.0\\.attention\\.wq`` only layer 0's; a layer no key matches keeps
  lora_rank / lora_alpha.
* ``layers_to_transform`` (an index or a list) keeps only the targets inside those decoder layers; the
  index is the first number segment of the path, ``re.match(r".*?\\.[^.]*\\.(\\d+)\\.", path)`` (the 3 of
  ``model.layers.3.attention.wq``), or with ``layers_pattern`` the number right after a segment that
  pattern matches (``(?:^|.*?\\.)<pattern>\\.(\\d+)\\.``). A target without an index is dropped (PEFT's
  rule, except that PEFT keeps a module whose whole path is an entry of a list target_modules, e.g.
  ``lm_head``: target_modules is one regex here, so such a layer needs no layers_to_transform to be left out).
* ``modules_to_save``: names of cells trained in full; a cell is one when its dotted path ends with a
  name (PEFT's plain ``str.endswith``: ``norm`` also takes ``attention_norm``).
* ``loraplus_lr_ratio``: LoRA+; used by the optimizer only.

Kept apart from config.py so that the rules have one home; the config holds the values.
"""
import re

from mindpet_lite import _checks

__all__ = ["pattern_key", "layer_index", "ends_with_any", "check_pattern_map", "check_layers_to_transform",
           "check_layers_pattern", "check_modules_to_save", "check_loraplus_lr_ratio", "pattern_pairs"]

_DEFAULT_INDEX = re.compile(r".*?\.[^.]*\.(?P<idx>\d+)\.")


# ---- the rules --------------------------------------------------------------------------------
def pattern_key(patterns, path):
    """The first key of ``patterns`` matching the end of ``path`` at a dot boundary, or None."""
    for key in patterns:
        if re.match(rf"(.*\.)?({key})$", path):
            return key
    return None


def layer_index(path, layers_pattern=None):
    """The decoder-layer index of a dotted path (see the module docstring), or None."""
    if not layers_pattern:
        match = _DEFAULT_INDEX.match(path)
    else:
        match = None
        for pattern in layers_pattern:
            match = re.match(rf"(?:^|.*?\.){pattern}\.(?P<idx>\d+)\.", path)
            if match is not None:
                break
    return int(match.group("idx")) if match else None


def ends_with_any(path, names):
    """True when ``path`` ends with one of ``names`` (PEFT's modules_to_save rule)."""
    return any(path.endswith(name) for name in names or ())


# ---- the checks (messages name the key, the value and what is allowed) -------------------------
def pattern_pairs(value):
    """``[(key, value)]`` of a pattern mapping or of a list of pairs (the metadata's order-keeping form)."""
    if isinstance(value, dict):
        return list(value.items())
    if isinstance(value, (list, tuple)) and all(isinstance(p, (list, tuple)) and len(p) == 2 for p in value):
        return [tuple(p) for p in value]
    return None


def check_pattern_map(key, value, what):
    """``{regex: number}`` (``what`` 'rank' or 'alpha') from a mapping, a list of pairs or None."""
    if value is None:
        return {}
    example = "{'wq': 16, 'layers\\.0\\..*': 4}"
    pairs = pattern_pairs(value)
    if pairs is None:
        raise TypeError(f"{key} must be a mapping of layer-path regex -> {what}, e.g. {example}, "
                        f"got {_checks.describe(value)}")
    out = {}
    for pattern, number in pairs:
        if not isinstance(pattern, str) or not pattern:
            raise TypeError(f"{key} keys must be non-empty regex strings, got {_checks.describe(pattern)}")
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"{key} key {pattern!r} is not a valid regex ({err})") from err
        name = f"{key}[{pattern!r}]"
        out[pattern] = (_checks.check_positive_int(name, number) if what == "rank"
                        else _checks.check_lora_alpha(name, number))
    return out


def check_layers_to_transform(value):
    """None, or a sorted list of distinct layer indices (ints >= 0) from an int or a non-empty list."""
    if value is None:
        return None
    allowed = "a layer index (an int >= 0) or a non-empty list of them"
    items = [value] if _checks.is_int(value) else value
    if not isinstance(items, (list, tuple)) or not items:
        raise TypeError(f"layers_to_transform must be {allowed}, got {_checks.describe(value)}")
    for item in items:
        if not _checks.is_int(item):
            raise TypeError(f"layers_to_transform must be {allowed}, got item {_checks.describe(item)}")
        if item < 0:
            raise ValueError(f"layers_to_transform must be {allowed}, got item {_checks.describe(item)}")
    return sorted({int(i) for i in items})


def check_layers_pattern(value, layers_to_transform):
    """None, or a list of regexes naming the segment before the layer index (needs layers_to_transform)."""
    if value is None or value == [] or value == "":
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(p, str) and p for p in items):
        raise TypeError("layers_pattern must be a regex string (e.g. 'layers') or a list of them, "
                        f"got {_checks.describe(value)}")
    for pattern in items:
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"layers_pattern {pattern!r} is not a valid regex ({err})") from err
    if layers_to_transform is None:
        raise ValueError(f"layers_pattern={value!r} needs layers_to_transform (the indices to keep), as in PEFT")
    return list(items)


def check_modules_to_save(value):
    """None, or a list of non-empty cell names (a single string is one name)."""
    if value is None:
        return None
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not items or not all(isinstance(n, str) and n for n in items):
        raise TypeError("modules_to_save must be a cell name (e.g. 'lm_head') or a non-empty list of names, "
                        f"got {_checks.describe(value)}")
    return list(items)


def check_loraplus_lr_ratio(value):
    """None, or a finite number > 0 (B's lr / A's lr)."""
    if value is None:
        return None
    return float(_checks.check_number("loraplus_lr_ratio", value, above=0))
