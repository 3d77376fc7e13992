"""Argument checks shared by every layer of the toolkit.

Each check raises a built-in exception whose message names the argument, the value received and
what is allowed, e.g. ``lora_rank must be an int > 0, got 0 (int)``. Checks run before any work.

Here too: the one reader of booleans written as text (:func:`to_bool`, :func:`bool_arg` for argparse),
the one "unknown key, did you mean" checker (:func:`split_known_keys`) and the command line's exit
status for an exception (:func:`exit_status`).
"""
import argparse
import difflib
import json
import math
import numbers
import os
import reprlib

import mindspore as ms
import numpy as np
import yaml
from mindspore import dtype as mstype

FLOAT_DTYPES = {"float16": mstype.float16, "float32": mstype.float32, "bfloat16": mstype.bfloat16}


# repr bounded while it is built: a YAML of nested aliases expands to billions of items, and a
# plain repr() would build all of them before a message could cut it short
_SHORT_REPR = reprlib.Repr()
_SHORT_REPR.maxlevel, _SHORT_REPR.maxdict, _SHORT_REPR.maxlist, _SHORT_REPR.maxtuple = 3, 4, 6, 6
_SHORT_REPR.maxset, _SHORT_REPR.maxstring, _SHORT_REPR.maxother, _SHORT_REPR.maxlong = 6, 240, 80, 40


def describe(value):
    """`value (type)` for error messages, at most ~240 characters of value however large it is (a
    path is shown whole up to that length)."""
    text = _SHORT_REPR.repr(value)
    if len(text) > 240:
        text = text[:237] + "..."
    return f"{text} ({type(value).__name__})"


def is_int(value):
    """True for a real int: bool is not an int here."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_number(value):
    """True for an int or float, not bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _range_text(minimum=None, maximum=None, above=None, below=None):
    """'>= 0 and < 1' for the bounds that are given ('' when none is)."""
    parts = [f"{op} {bound}" for op, bound in ((">", above), (">=", minimum), ("<", below), ("<=", maximum))
             if bound is not None]
    return " and ".join(parts)


def _in_range(value, minimum=None, maximum=None, above=None, below=None):
    return ((minimum is None or value >= minimum) and (maximum is None or value <= maximum)
            and (above is None or value > above) and (below is None or value < below))


def check_int(name, value, minimum=None, maximum=None, above=None, below=None):
    """An int (not a bool) within the given bounds: ``minimum``/``maximum`` inclusive,
    ``above``/``below`` exclusive."""
    allowed = " ".join(filter(None, ("an int", _range_text(minimum, maximum, above, below))))
    if not is_int(value):
        raise TypeError(f"{name} must be {allowed}, got {describe(value)}")
    if not _in_range(value, minimum, maximum, above, below):
        raise ValueError(f"{name} must be {allowed}, got {describe(value)}")
    return int(value)


def check_positive_int(name, value):
    """An int > 0 (not a bool)."""
    return check_int(name, value, above=0)


def check_number(name, value, minimum=None, maximum=None, above=None, below=None):
    """An int or float (not a bool) within the given bounds (as :func:`check_int`)."""
    allowed = " ".join(filter(None, ("a number", _range_text(minimum, maximum, above, below))))
    if not is_number(value):
        hint = ""
        if isinstance(value, str) and reads_as_float(value):
            hint = " (YAML reads 1e-5 as a string: write 1.0e-5)"
        raise TypeError(f"{name} must be {allowed}, got {describe(value)}{hint}")
    if not math.isfinite(value):
        raise ValueError(f"{name} must be a finite {allowed[2:]}, got {describe(value)}")
    if not _in_range(value, minimum, maximum, above, below):
        raise ValueError(f"{name} must be {allowed}, got {describe(value)}")
    return value


def reads_as_float(text):
    """True for text that float() reads (YAML 1.1 reads 1e-5, without a dot, as such a string)."""
    try:
        float(text)
    except ValueError:
        return False
    return True


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
    """A bool, strictly (for arguments of functions; text from a file or a flag goes to :func:`to_bool`)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {describe(value)}")
    return value


_BOOL_WORDS = {"true": True, "false": False}


def to_bool(name, value):
    """A bool from a bool or the text true / false in any case, as MindFormers' ``str2bool`` reads
    flags (``--use_parallel True``) and as a YAML override may carry them."""
    if isinstance(value, str) and value.lower() in _BOOL_WORDS:
        return _BOOL_WORDS[value.lower()]
    return check_bool(name, value)


def bool_arg(text):
    """argparse ``type=`` for boolean flags: :func:`to_bool` with argparse's error type."""
    try:
        return to_bool("value", text)
    except TypeError:
        raise argparse.ArgumentTypeError(f"expected True or False (any case), got {text!r}") from None


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


def check_choice(name, value, choices, note=""):
    """``value`` if it is one of ``choices`` (a bool never stands for 0 or 1); the error suggests
    the closest choice (``cpu`` -> ``CPU``). ``note`` says what the choices mean."""
    is_bool_for_number = isinstance(value, bool) and not any(isinstance(c, bool) for c in choices)
    try:
        known = value in choices and not is_bool_for_number
    except TypeError:  # unhashable value
        known = False
    if known:
        return value
    allowed = sorted(choices) if isinstance(choices, (set, frozenset)) else list(choices)
    hint = _closest_choice(value, allowed)
    hint = f"; did you mean {hint!r}?" if hint is not None else ""
    note = f" {note}" if note else ""
    raise ValueError(f"{name} must be one of {allowed}{note}, got {describe(value)}{hint}")


def _closest_choice(value, choices):
    if not isinstance(value, str):
        return None
    texts = [c for c in choices if isinstance(c, str)]
    same_but_case = [c for c in texts if c.lower() == value.lower()]
    return same_but_case[0] if same_but_case else closest(value, texts)


def check_finite_arrays(what, arrays):
    """Every array of ``{name: array}`` is finite (NaN / Inf weights are refused, naming them)."""
    bad = [name for name, array in arrays.items()
           if np.issubdtype(np.asarray(array).dtype, np.floating) and not np.isfinite(array).all()]
    if bad:
        raise ValueError(f"{what}: {len(bad)} tensors hold NaN or Inf: {short_list(bad, 6)}")
    return arrays


def closest(key, valid):
    """The valid key closest to a misspelled one, or None."""
    hits = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1, cutoff=0.6)
    return hits[0] if hits else None


def split_known_keys(section, mapping, valid, known_ignored=(), strict=False):
    """Split a mapping of settings into the keys the caller reads and the keys it skips.

    Keys in ``valid`` are used; keys in ``known_ignored`` (what MindFormers files carry for features
    the caller does not have) are skipped. Any other key is an error when ``strict``; otherwise it is
    an error only when it is close to a valid key (a typo, which would otherwise be silently
    ignored), and skipped when it is not. Errors name the section, the key and the closest valid key.

    Returns:
        (used, ignored): ``{key: value}`` of the valid keys, and the list of skipped keys, both in
        the mapping's order.
    """
    if not isinstance(mapping, dict):
        raise TypeError(f"{section} must be a mapping, got {describe(mapping)}")
    used, ignored = {}, []
    for key, value in mapping.items():
        if key in valid:
            used[key] = value
            continue
        if key not in known_ignored:
            hint = closest(key, valid)
            if strict or hint is not None:
                hint = f"; did you mean '{hint}'?" if hint is not None else ""
                raise ValueError(f"{section}: unknown key '{key}'{hint} (valid keys: {', '.join(map(str, valid))})")
        ignored.append(key)
    return used, ignored


def load_mapping(path, what):
    """A YAML file (``yaml.safe_load``) or a ``*.json`` one (``json``: YAML 1.1 would read ``1e-06`` as a
    string) that must hold a mapping; every error names ``what`` and the path."""
    if not isinstance(path, (str, os.PathLike)) or not os.fspath(path):
        raise TypeError(f"{what} must be the path of a YAML or JSON file, got {describe(path)}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} file not found: {path}")
    is_json = path.lower().endswith(".json")
    with open(path, encoding="utf-8") as f:
        try:
            data = json.load(f) if is_json else yaml.safe_load(f)
        except (ValueError, yaml.YAMLError) as err:
            raise ValueError(f"{path}: not valid {'JSON' if is_json else 'YAML'} ({err})") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path}: {what} must be a mapping, got {describe(data)}")
    return data


def short_list(names, limit=12):
    """Sorted names joined for a message, the first `limit` of them and a count of the rest."""
    names = sorted(names)
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


# The command line's exit status (cli.py, run.py): 2 when what the user typed or pointed at is wrong
# (a bad value, a missing or misplaced file, an output that exists, an unsupported request), 1 for a
# failure while working (any other error: I/O, the runtime, a non-finite loss, ...), 0 on success.
INPUT_ERRORS = (ValueError, TypeError, KeyError, FileNotFoundError, IsADirectoryError, NotADirectoryError,
                FileExistsError, NotImplementedError)


def exit_status(err):
    """2 for an error of :data:`INPUT_ERRORS` (bad input), 1 for any other (a failure while working)."""
    return 2 if isinstance(err, INPUT_ERRORS) else 1
