"""Argument checks shared by every layer of the toolkit.

Each check raises a built-in exception whose message names the argument, the value received and
what is allowed, e.g. ``lora_rank must be an int > 0, got 0 (int)``. Checks run before any work.
"""
import difflib
import numbers
import os

import mindspore as ms
import yaml
from mindspore import dtype as mstype

FLOAT_DTYPES = {"float16": mstype.float16, "float32": mstype.float32, "bfloat16": mstype.bfloat16}


def describe(value):
    """`value (type)` for error messages."""
    text = repr(value)
    if len(text) > 80:
        text = text[:77] + "..."
    return f"{text} ({type(value).__name__})"


def is_int(value):
    """True for a real int: bool is not an int here."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value):
    """True for an int or float, not bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_positive_int(name, value):
    if not is_int(value):
        raise TypeError(f"{name} must be an int > 0, got {describe(value)}")
    if value <= 0:
        raise ValueError(f"{name} must be an int > 0, got {describe(value)}")
    return int(value)


def check_lora_alpha(name, value):
    """A finite int or float other than 0, returned as a Python int or float: numpy scalars and
    `fractions.Fraction` convert (the scaling alpha / r is computed in floats anyway, and a Fraction
    reaches neither a graph nor a YAML / JSON file)."""
    allowed = "a finite int or float other than 0"
    if not is_number(value):
        raise TypeError(f"{name} must be {allowed}, got {describe(value)}")
    if value == 0 or not abs(value) < float("inf"):  # NaN fails every comparison
        raise ValueError(f"{name} must be {allowed}, got {describe(value)}")
    return int(value) if is_int(value) else float(value)


def check_dropout(name, value):
    """A float in [0, 1); an int (even 0) is refused, as in MindPet."""
    if not isinstance(value, float):
        raise TypeError(f"{name} must be a float in [0.0, 1.0), got {describe(value)}")
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be a float in [0.0, 1.0), got {describe(value)}")
    return value


def to_float_dtype(name, value, allow_none=False):
    """A MindSpore float dtype from a dtype or its name ('float16', 'float32', 'bfloat16')."""
    if value is None and allow_none:
        return None
    if isinstance(value, str) and value in FLOAT_DTYPES:
        return FLOAT_DTYPES[value]
    if isinstance(value, ms.dtype.Type) and value in FLOAT_DTYPES.values():
        return value
    allowed = "mindspore float16, float32 or bfloat16 (or their names)"
    if allow_none:
        allowed += ", or None"
    raise TypeError(f"{name} must be {allowed}, got {describe(value)}")


def check_bool(name, value):
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {describe(value)}")
    return value


def check_str(name, value, allow_empty=False):
    if not isinstance(value, str):
        raise TypeError(f"{name} must be a string, got {describe(value)}")
    if not value and not allow_empty:
        raise ValueError(f"{name} must be a non-empty string, got {describe(value)}")
    return value


def check_str_list(name, value):
    """A non-empty list of strings (MindPet's include / exclude lists)."""
    if not isinstance(value, list) or not value:
        raise TypeError(f"{name} must be a non-empty list of strings, got {describe(value)}")
    for item in value:
        if not isinstance(item, str):
            raise TypeError(f"{name} must be a non-empty list of strings, got item {describe(item)}")
    return value


def check_choice(name, value, choices):
    if value not in choices:
        raise ValueError(f"{name} must be one of {sorted(choices)}, got {describe(value)}")
    return value


def closest(key, valid):
    """The valid key closest to a misspelled one, or None."""
    hits = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1, cutoff=0.6)
    return hits[0] if hits else None


def check_known_keys(section, keys, valid):
    """Raise ValueError for the first key not in `valid`, suggesting the closest valid one."""
    for key in keys:
        if key not in valid:
            hint = closest(key, valid)
            hint = f"; did you mean '{hint}'?" if hint else ""
            raise ValueError(f"{section}: unknown key '{key}'{hint} (valid keys: {', '.join(sorted(valid))})")


def load_yaml_mapping(path, what):
    """`yaml.safe_load` of a file that must hold a mapping; every error names `what` and the path."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise TypeError(f"{what} must be the path of a YAML file, got {describe(path)}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} YAML not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            data = yaml.safe_load(f)
        except yaml.YAMLError as err:
            raise ValueError(f"{path}: not valid YAML ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: {what} must be a mapping, got {describe(data)}")
    return data


def short_list(names, limit=12):
    """Sorted names joined for a message, the first `limit` of them and a count of the rest."""
    names = sorted(names)
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more
