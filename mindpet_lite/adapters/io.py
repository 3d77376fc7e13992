"""Adapter files: save the trainable weights of a LoRA network, read them back, load them onto a network.

Formats (chosen by the path's suffix, which is required: ``.ckpt`` or ``.safetensors``):

* ``ckpt``: MindSpore's protobuf checkpoint (``mindspore.save_checkpoint``). The metadata rides along
  as one string entry, ``__mindpet_lite_metadata__`` (a JSON document), via ``append_dict``;
  ``mindspore.load_checkpoint`` gives it back as a ``str``.
* ``safetensors``: written with the ``safetensors`` package, the metadata as the header's
  ``{"mindpet_lite": <JSON>}`` entry. MindSpore's own ``save_checkpoint(format='safetensors')`` is not
  used: it cannot store a string entry (it fails writing the ``append_dict`` string as a tensor) and
  its loader drops the header metadata, so the metadata would not round-trip.

Metadata (a JSON object)::

    {"format_version": 1, "kind": "lora_adapter", "toolkit": "mindpet_lite", "toolkit_version": "0.1.0",
     "pet_config": {LoraConfig.to_dict()}, "scaling": 2.0,
     "base_fingerprint": {"sha256": "...", "params": 21, "numel": 123456}, "source": "mindpet_lite"}

The base fingerprint hashes the sorted ``(name, shape)`` pairs of the network's non-LoRA parameters,
i.e. the base model, whether or not ``freeze_exclude`` left some of them trainable: the same base gives
the same fingerprint for any choice of trainable extras.

Every write goes to a temporary name in the target directory and is ``os.replace``-d onto the path, so
a failed or refused write leaves the path as it was. Reads name the file and say what is wrong
(truncated, not a checkpoint, the other format than its suffix).
"""
import glob
import hashlib
import json
import logging
import math
import os
import re
import sys
import tempfile

import numpy as np
import mindspore as ms
from mindspore import Parameter, Tensor, nn

from mindpet_lite import _checks
from mindpet_lite.delta.lora import LORA_A, LORA_B, LoRADense
from mindpet_lite.graph.freeze import LORA_PARAM_MARK

logger = logging.getLogger(__name__)

__all__ = ["save_adapter", "load_adapter", "read_adapter", "read_checkpoint", "write_checkpoint",
           "gather_sharded_adapter", "base_fingerprint", "adapter_scaling", "pet_config_from_metadata"]

FORMATS = ("ckpt", "safetensors")
FORMAT_VERSION = 1
CKPT_META_KEY = "__mindpet_lite_metadata__"
ST_META_KEY = "mindpet_lite"
_SUFFIX = {".ckpt": "ckpt", ".safetensors": "safetensors"}

# names MindSpore / MindFormers put next to the weights in a training checkpoint: never adapter weights
_STATE_PREFIXES = ("adam_m.", "adam_v.", "moment1.", "moment2.", "moments.", "accu_grads.",
                   "accumulate_grads.", "exp_avg.", "exp_avg_sq.", "_accu_grads.", "global_step",
                   "learning_rate", "scale_sense", "loss_scale", "epoch_num", "step_num",
                   "current_iterator_step", "last_overflow_iterator_step")
# foreign LoRA names -> ours: PEFT / mcore `X.lora_A.weight`, `X.lora_A.default.weight`
_FOREIGN_LORA = ((re.compile(r"\.lora_[Aa](?:\.default)?\.weight$"), "." + LORA_A),
                 (re.compile(r"\.lora_[Bb](?:\.default)?\.weight$"), "." + LORA_B))
_PEFT_PREFIX = "base_model.model."


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
def toolkit_version():
    """``mindpet_lite.__version__`` without importing the package face (it is already loaded)."""
    pkg = sys.modules.get("mindpet_lite")
    version = getattr(pkg, "__version__", None)
    if version:
        return version
    init = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "__init__.py")
    with open(init, encoding="utf-8") as f:
        match = re.search(r'^__version__ = "([^"]+)"', f.read(), re.M)
    return match.group(1) if match else "unknown"


def format_from_path(path, format=None):  # pylint: disable=redefined-builtin
    """'ckpt' or 'safetensors' from the suffix of ``path``; ``format`` (if given) must agree."""
    _checks.check_str("path", path)
    if format is not None:
        _checks.check_choice("format", format, FORMATS)
    suffix = os.path.splitext(path)[1].lower()
    from_suffix = _SUFFIX.get(suffix)
    if from_suffix is None:
        wanted = f".{format}" if format else ".ckpt or .safetensors"
        raise ValueError(f"path must end with {wanted} (the file format is read from the suffix), got {path!r}")
    if format is not None and format != from_suffix:
        raise ValueError(f"format={format!r} does not match the suffix of path {path!r} ({from_suffix}); "
                         f"name the file *.{format} or pass format={from_suffix!r}")
    return from_suffix


def check_output_path(path, format=None):  # pylint: disable=redefined-builtin
    """Check an output file path before any work; returns its format."""
    _checks.check_str("path", path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"path is a directory, give a file name ending in .ckpt or .safetensors: {path}")
    fmt = format_from_path(path, format)
    parent = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(parent):
        raise FileNotFoundError(f"the directory of path does not exist: {parent}")
    return fmt


def to_numpy(value):
    """numpy array of a Parameter, Tensor or array-like (Parameters are initialised first)."""
    if isinstance(value, Parameter) and value.has_init:
        value.init_data()
    if isinstance(value, Tensor):
        return value.asnumpy()
    return np.asarray(value)


def to_numpy_dict(mapping, what="checkpoint"):
    """``{name: numpy}`` from a dict of Parameters / Tensors / arrays (non-tensor entries dropped)."""
    if not isinstance(mapping, dict):
        raise TypeError(f"{what} must be a dict of name -> Tensor/array or a file path, got {_checks.describe(mapping)}")
    out = {}
    for name, value in mapping.items():
        if isinstance(value, (Tensor, np.ndarray)):
            out[name] = to_numpy(value)
        elif not isinstance(value, (str, int, float, bool)):
            raise TypeError(f"{what}[{name!r}] must be a Tensor or numpy array, got {_checks.describe(value)}")
    return out


def write_json(path, obj):
    """Write JSON atomically (temporary name in the same directory, then os.replace)."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, sort_keys=True)
            f.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise


def _remove(path):
    try:
        os.remove(path)
    except FileNotFoundError:
        pass


# ------------------------------------------------------------------------------------------------
# raw checkpoint files
# ------------------------------------------------------------------------------------------------
def _sniff(path):
    """'safetensors' if the file starts with a safetensors header, else 'ckpt' (protobuf)."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(9)
    if len(head) == 9 and head[8:9] == b"{":
        n = int.from_bytes(head[:8], "little")
        if 0 < n <= size:
            return "safetensors"
    return "ckpt"


def _check_input_file(path, what="path"):
    _checks.check_str(what, path)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{what} is a directory, expected a .ckpt or .safetensors file: {path}")
    if not os.path.exists(path):
        raise FileNotFoundError(f"{what}: no such file: {path}")
    fmt = format_from_path(path)
    if os.path.getsize(path) == 0:
        raise ValueError(f"{path} is empty (0 bytes): truncated or never written")
    actual = _sniff(path)
    if fmt == "ckpt" and actual == "safetensors":
        raise ValueError(f"{path} is named .ckpt but holds a safetensors file; rename it *.safetensors")
    return fmt


def read_checkpoint(path):
    """Read a ``.ckpt`` or ``.safetensors`` file.

    Returns:
        ``(tensors, extras)``: ``{name: numpy array}`` and the non-tensor content: string entries of a
        ckpt, or the header metadata of a safetensors file.

    Raises:
        FileNotFoundError, IsADirectoryError, ValueError (unknown suffix, truncated or corrupt file).
    """
    fmt = _check_input_file(path)
    if fmt == "safetensors":
        return _read_safetensors(path)
    return _read_ckpt(path)


def _read_safetensors(path):
    from safetensors import SafetensorError  # pylint: disable=import-outside-toplevel
    from safetensors.numpy import load_file  # pylint: disable=import-outside-toplevel
    from safetensors import safe_open  # pylint: disable=import-outside-toplevel
    try:
        with safe_open(path, framework="np") as f:
            extras = dict(f.metadata() or {})
        tensors = load_file(path)
    except (SafetensorError, OSError, ValueError, TypeError) as err:
        raise ValueError(f"{path} is not a readable safetensors file (truncated or corrupt?): {err}") from err
    return dict(tensors), extras


def _read_ckpt(path):
    try:
        raw = ms.load_checkpoint(path)
    except (ValueError, RuntimeError, OSError, TypeError) as err:
        raise ValueError(f"{path} is not a readable MindSpore checkpoint (truncated or corrupt?): {err}") from err
    tensors, extras = {}, {}
    for name, value in raw.items():
        if isinstance(value, str):
            extras[name] = value
        else:
            tensors[name] = to_numpy(value)
    return tensors, extras


def write_checkpoint(tensors, path, format=None, metadata=None, raw_metadata=None):  # pylint: disable=redefined-builtin
    """Write ``{name: array/Tensor}`` atomically to a ``.ckpt`` or ``.safetensors`` file.

    Args:
        metadata: a JSON-able dict stored as the mindpet_lite metadata (see the module docstring).
        raw_metadata: extra ``{str: str}`` safetensors header entries (e.g. ``{"format": "pt"}``).

    Raises:
        ValueError: empty ``tensors``, a bad path / format; the path is untouched on any error.
    """
    fmt = check_output_path(path, format)
    arrays = to_numpy_dict(tensors, "tensors")
    if not arrays:
        raise ValueError(f"refusing to write an empty checkpoint to {path}")
    meta_text = json.dumps(metadata, sort_keys=True) if metadata is not None else None
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=f".tmp.{fmt}", dir=directory)
    os.close(fd)
    ms_tmp = tmp[: -len(f".{fmt}")] + ".tmp"  # where mindspore.save_checkpoint stages its own write
    try:
        if fmt == "ckpt":
            items = [{"name": name, "data": Tensor(array)} for name, array in arrays.items()]
            append = {CKPT_META_KEY: meta_text} if meta_text is not None else None
            ms.save_checkpoint(items, tmp, append_dict=append)
        else:
            from safetensors.numpy import save_file  # pylint: disable=import-outside-toplevel
            header = dict(raw_metadata or {})
            if meta_text is not None:
                header[ST_META_KEY] = meta_text
            save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, tmp, metadata=header or None)
        os.chmod(tmp, 0o644)  # mindspore leaves checkpoints read-only
        os.replace(tmp, path)
    except BaseException:
        for name in (tmp, ms_tmp):
            if os.path.exists(name):
                os.chmod(name, 0o600)
                _remove(name)
        raise
    logger.info("wrote %d tensors to %s", len(arrays), path)
    return path


# ------------------------------------------------------------------------------------------------
# metadata
# ------------------------------------------------------------------------------------------------
def _metadata_from_extras(extras, path):
    text = extras.get(CKPT_META_KEY, extras.get(ST_META_KEY))
    if text is None:
        return None
    try:
        meta = json.loads(text)
    except ValueError as err:
        raise ValueError(f"{path}: the mindpet_lite metadata is not valid JSON: {err}") from err
    if not isinstance(meta, dict):
        raise ValueError(f"{path}: the mindpet_lite metadata must be a JSON object, got {type(meta).__name__}")
    return meta


def base_fingerprint(net_or_shapes):
    """``{"sha256", "params", "numel"}`` of the base model: the sorted (name, shape) of the non-LoRA
    parameters of a network (or of a ``{name: shape}`` dict)."""
    if isinstance(net_or_shapes, nn.Cell):
        shapes = {name: tuple(p.shape) for name, p in net_or_shapes.parameters_and_names()}
    elif isinstance(net_or_shapes, dict):
        shapes = {name: tuple(getattr(v, "shape", v)) for name, v in net_or_shapes.items()}
    else:
        raise TypeError(f"net must be a mindspore.nn.Cell or a dict of name -> shape, "
                        f"got {_checks.describe(net_or_shapes)}")
    base = sorted((n, s) for n, s in shapes.items() if LORA_PARAM_MARK not in n)
    digest = hashlib.sha256("\n".join(f"{n}:{list(s)}" for n, s in base).encode()).hexdigest()
    return {"sha256": digest, "params": len(base), "numel": int(sum(math.prod(s) for _, s in base))}


_fingerprint = base_fingerprint  # save_adapter's argument of the same name shadows it


def lora_cells(net):
    """``{cell path: LoRADense}`` of a network."""
    return {name: cell for name, cell in net.cells_and_names() if isinstance(cell, LoRADense)}


def _config_dict(net, config):
    """The pet_config dict for the metadata, checked against the LoRA cells of ``net``."""
    from mindpet_lite.pet.config import LoraConfig  # pylint: disable=import-outside-toplevel
    cells = lora_cells(net)
    if config is None:
        config = getattr(net, "pet_config", None)
    if config is None:
        config = _mindformers_config(net)
    if config is None:
        if not cells:
            return None
        config = _infer_config(cells)
    if isinstance(config, dict):
        config = LoraConfig.from_dict(config)
    if not isinstance(config, LoraConfig):
        raise TypeError(f"config must be a LoraConfig, a pet_config dict or None, got {_checks.describe(config)}")
    for name, cell in cells.items():
        if cell.lora_rank != config.lora_rank:
            raise ValueError(f"config.lora_rank={config.lora_rank} but {name} has lora_rank={cell.lora_rank}: "
                             "the metadata would not describe the weights")
        if not math.isclose(cell.scaling, config.scaling, rel_tol=1e-9):
            raise ValueError(f"config scaling {config.scaling:g} (lora_alpha={config.lora_alpha}, "
                             f"use_rslora={config.use_rslora}) but {name} computes with scaling {cell.scaling:g}")
    return config.to_dict()


def _mindformers_config(net):
    """A MindFormers model's ``config.pet_config`` (a dict-like block) as a LoraConfig, or None."""
    from mindpet_lite.pet.config import LoraConfig  # pylint: disable=import-outside-toplevel
    block = getattr(getattr(net, "config", None), "pet_config", None)
    if block is None:
        return None
    try:
        data = {k: v for k, v in dict(block).items() if k in LoraConfig.keys()}
        return LoraConfig.from_dict(data)
    except (TypeError, ValueError) as err:
        logger.info("save_adapter: the model's config.pet_config is not usable (%s); describing the LoRA cells", err)
        return None


def _infer_config(cells):
    """A LoraConfig describing LoRA cells built without one (all must agree)."""
    from mindpet_lite.pet.config import LoraConfig  # pylint: disable=import-outside-toplevel
    keys = {(c.lora_rank, c.lora_alpha, c.use_rslora) for c in cells.values()}
    if len(keys) != 1:
        raise ValueError(f"the LoRA cells disagree on (lora_rank, lora_alpha, use_rslora): {sorted(keys)}; "
                         "pass config= to say what the adapter is")
    rank, alpha, rslora = keys.pop()
    dropouts = {float(getattr(c.lora_dropout, "p", 0.0)) if c.lora_dropout is not None else 0.0
                for c in cells.values()}
    leaves = sorted({name.rsplit(".", 1)[-1] for name in cells})
    return LoraConfig(lora_rank=rank, lora_alpha=alpha, use_rslora=rslora, lora_dropout=max(dropouts),
                      target_modules="|".join(f".*{re.escape(leaf)}" for leaf in leaves))


def adapter_scaling(metadata):
    """The scaling s of an adapter's metadata (``scaling``, else from its pet_config), or None."""
    if not metadata:
        return None
    if metadata.get("scaling") is not None:
        return float(metadata["scaling"])
    cfg = metadata.get("pet_config") or {}
    if cfg.get("lora_alpha") is not None and cfg.get("lora_rank"):
        root = math.sqrt(cfg["lora_rank"]) if cfg.get("use_rslora") else cfg["lora_rank"]
        return float(cfg["lora_alpha"]) / root
    return None


def pet_config_from_metadata(metadata):
    """The adapter's ``LoraConfig`` (build the network with it to load the adapter)."""
    from mindpet_lite.pet.config import LoraConfig  # pylint: disable=import-outside-toplevel
    cfg = dict((metadata or {}).get("pet_config") or {})
    if not cfg:
        raise ValueError("the adapter's metadata holds no pet_config")
    for key in ("lora_a_init", "lora_b_init"):  # class names of custom initializers do not rebuild
        value = cfg.get(key)
        if isinstance(value, str):
            try:
                LoraConfig._check_init(key, value)  # pylint: disable=protected-access
            except (TypeError, ValueError):
                cfg.pop(key)
    return LoraConfig.from_dict(cfg, section="adapter metadata pet_config")


# ------------------------------------------------------------------------------------------------
# save
# ------------------------------------------------------------------------------------------------
def adapter_parameters(net):
    """``{name: Parameter}`` an adapter holds: the LoRA parameters plus every trainable parameter."""
    if not isinstance(net, nn.Cell):
        raise TypeError(f"net must be a mindspore.nn.Cell, got {_checks.describe(net)}")
    return {name: p for name, p in net.parameters_and_names() if LORA_PARAM_MARK in name or p.requires_grad}


def save_adapter(net, path, format=None, config=None, base_fingerprint=None):  # pylint: disable=redefined-builtin,redefined-outer-name
    """Save the adapter of a LoRA network: its LoRA parameters and anything left trainable.

    Args:
        net (nn.Cell): the network after ``get_pet_model`` (or with LoRADense cells).
        path (str): a ``.ckpt`` or ``.safetensors`` file (not a directory); written atomically.
        format (str): 'ckpt' or 'safetensors'; default from the suffix, which it must agree with.
        config: a LoraConfig or pet_config dict; default ``net.pet_config``, else inferred from the
            LoRA cells. Checked against the cells (rank and scaling).
        base_fingerprint: None computes it from ``net``; a dict from :func:`base_fingerprint` is used
            as given (e.g. for a network whose base weights were dropped).

    Returns:
        The metadata dict written.

    Raises:
        TypeError / ValueError: bad arguments, an empty adapter (nothing LoRA or trainable: a net without
            LoRA cells, or parameters sharded away), a config that contradicts the cells.
        IsADirectoryError: ``path`` is a directory.
    """
    fmt = check_output_path(path, format)
    params = adapter_parameters(net)
    if not params:
        raise ValueError("refusing to save an empty adapter: the network has no LoRA parameters and nothing "
                         "trainable (was get_pet_model applied?)")
    tensors = {}
    for name, param in params.items():
        array = to_numpy(param)
        if array.size == 0:
            raise ValueError(f"refusing to save an empty adapter: {name} has no elements (shape {list(array.shape)}); "
                             "under model parallelism gather the parameters first")
        tensors[name] = array
    cfg = _config_dict(net, config)
    fingerprint = base_fingerprint if base_fingerprint is not None else _fingerprint(net)
    meta = {"format_version": FORMAT_VERSION, "kind": "lora_adapter", "toolkit": "mindpet_lite",
            "toolkit_version": toolkit_version(), "source": "mindpet_lite", "pet_config": cfg,
            "scaling": _config_scaling(cfg), "base_fingerprint": fingerprint}
    write_checkpoint(tensors, path, fmt, metadata=meta)
    n_lora = sum(LORA_PARAM_MARK in n for n in tensors)
    logger.info("save_adapter: %d LoRA + %d other tensors -> %s", n_lora, len(tensors) - n_lora, path)
    return meta


def _config_scaling(cfg):
    """scaling of a pet_config dict (None without one)."""
    if not cfg:
        return None
    return adapter_scaling({"pet_config": cfg})


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
    if os.path.isdir(path) and os.path.isfile(os.path.join(path, "adapter_config.json")):
        from mindpet_lite.adapters.peft import read_peft_adapter  # pylint: disable=import-outside-toplevel
        return read_peft_adapter(path)
    tensors, extras = read_checkpoint(path)
    meta = _metadata_from_extras(extras, path)
    if not tensors:
        raise ValueError(f"{path} holds no tensors")
    return tensors, (meta or {})


def normalize_name(name):
    """A file's parameter name in our vocabulary: ``X.lora_A.weight`` -> ``X.mindpet_delta_lora_a``,
    PEFT's ``base_model.model.`` prefix dropped."""
    for pattern, repl in _FOREIGN_LORA:
        name = pattern.sub(repl, name)
    if name.startswith(_PEFT_PREFIX):
        name = name[len(_PEFT_PREFIX):]
    return name


def _hf_alternative(name):
    """The built-in Llama name of a Hugging Face-style one (``...self_attn.q_proj.X``), or None."""
    from mindpet_lite.adapters import convert  # pylint: disable=import-outside-toplevel
    module, _, leaf = name.rpartition(".")
    if leaf in (LORA_A, LORA_B):
        mapped = convert.hf_module_to_mindspore(module)
        return f"{mapped}.{leaf}" if mapped else None
    return convert.hf_name_to_mindspore(name)


def resolve_names(keys, targets):
    """Map file keys onto target names: exact, HF-module translated, or one unique dotted-suffix match
    (a ``network.`` / ``model.`` prefix more or less). Returns ``(mapping, unexpected, ambiguous)``."""
    targets = list(targets)
    target_set = set(targets)
    mapping, unexpected, ambiguous = {}, [], {}
    for key in keys:
        cands = [normalize_name(key)]
        alt = _hf_alternative(cands[0])
        if alt and alt != cands[0]:
            cands.append(alt)
        exact = [c for c in cands if c in target_set]
        if exact:
            mapping[key] = exact[0]
            continue
        hits = sorted({t for t in targets for c in cands if t.endswith("." + c) or c.endswith("." + t)})
        if len(hits) == 1:
            mapping[key] = hits[0]
        elif hits:
            ambiguous[key] = hits
        else:
            unexpected.append(key)
    seen = {}
    for key, target in mapping.items():
        seen.setdefault(target, []).append(key)
    for target, ks in seen.items():
        if len(ks) > 1:
            for k in ks:
                ambiguous[k] = [target]
                mapping.pop(k)
    return mapping, unexpected, ambiguous


def _is_lora_key(name):
    return LORA_PARAM_MARK in normalize_name(name)


def is_state_key(name):
    return name.startswith(_STATE_PREFIXES)


def short_list(names, limit=12):
    names = sorted(names)
    more = f" ... (+{len(names) - limit} more)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def split_lora_pairs(tensors):
    """``({module: (A, B)}, {other name: array})`` from adapter tensors (names normalised, optimizer
    states dropped); a lone A or B, or A/B ranks that differ, are errors."""
    halves, extras = {}, {}
    for key, array in tensors.items():
        if is_state_key(key):
            continue
        name = normalize_name(key)
        if name.endswith("." + LORA_A) or name.endswith("." + LORA_B):
            module, _, leaf = name.rpartition(".")
            halves.setdefault(module, {})[leaf] = array
        elif LORA_PARAM_MARK in name:
            raise ValueError(f"adapter key {key!r} is neither {LORA_A} nor {LORA_B}")
        else:
            extras[key] = array
    pairs = {}
    for module, parts in halves.items():
        if set(parts) != {LORA_A, LORA_B}:
            have = sorted(parts)
            raise ValueError(f"adapter: {module} has {have} only; a LoRA pair needs both {LORA_A} and {LORA_B}")
        a, b = parts[LORA_A], parts[LORA_B]
        if a.ndim != 2 or b.ndim != 2 or a.shape[0] != b.shape[1]:
            raise ValueError(f"adapter: {module} has A {list(a.shape)} and B {list(b.shape)}; expected A [r, in] "
                             "and B [out, r] with the same r")
        pairs[module] = (a, b)
    return pairs, extras


def load_adapter(net, path, strict=True):
    """Load an adapter file onto a network, checking everything before assigning anything.

    Accepts files written by :func:`save_adapter`, MindFormers checkpoints holding
    ``...mindpet_delta_lora_a/_b`` (other entries, e.g. base weights and optimizer states, are ignored),
    mcore / PEFT names (``X.lora_A.weight``), a HF PEFT directory, and names differing from the
    network's by a prefix when the match is unique.

    Args:
        net (nn.Cell): the LoRA network (same targets, rank and scaling as the adapter).
        path (str): the adapter file or PEFT directory.
        strict (bool): True: every adapter key must match a parameter and every LoRA parameter of the
            network must be in the adapter; the base fingerprint and the scaling must agree.
            False: missing / unexpected keys and fingerprint or scaling differences are logged.
            Shape mismatches are errors either way.

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
    ours = bool(meta.get("pet_config") is not None or meta.get("source"))
    if not ours:
        dropped = [k for k in tensors if not _is_lora_key(k) or is_state_key(k)]
        tensors = {k: v for k, v in tensors.items() if k not in set(dropped)}
        if dropped:
            logger.info("load_adapter: %s: ignoring %d non-LoRA entries (base weights, optimizer states)",
                        path, len(dropped))
        if not tensors:
            raise ValueError(f"{path} holds no LoRA weights (names with mindpet_delta_lora_a/_b or lora_A/lora_B)")
    params = dict(net.parameters_and_names())
    mapping, unexpected, ambiguous = resolve_names(tensors, params)
    if ambiguous:
        detail = "; ".join(f"{k} -> {v}" for k, v in sorted(ambiguous.items())[:8])
        raise ValueError(f"{path}: adapter keys match the network ambiguously: {detail}")
    net_lora = {n for n in params if LORA_PARAM_MARK in n}
    missing = sorted(net_lora - set(mapping.values()))
    problems = []
    if missing:
        problems.append(f"missing keys (LoRA parameters of the network not in the adapter, {len(missing)}): "
                        f"{short_list(missing)}")
    if unexpected:
        problems.append(f"unexpected keys (adapter keys with no parameter in the network, {len(unexpected)}): "
                        f"{short_list(unexpected)}")
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

    _check_same_base(net, meta, path, strict)
    _check_cells(net, mapping, meta, path, strict)

    new_data = {target: Tensor(tensors[key]).astype(params[target].dtype) for key, target in mapping.items()}
    for target, data in new_data.items():
        params[target].set_data(data)
    logger.info("load_adapter: %d tensors from %s", len(new_data), path)
    return meta


def _check_same_base(net, meta, path, strict):
    saved = meta.get("base_fingerprint")
    if not isinstance(saved, dict) or "sha256" not in saved:
        return
    mine = base_fingerprint(net)
    if saved["sha256"] == mine["sha256"]:
        return
    text = (f"{path} was saved from another base model: {saved.get('params')} base parameters / "
            f"{saved.get('numel')} values (sha256 {saved['sha256'][:12]}), this network has {mine['params']} / "
            f"{mine['numel']} (sha256 {mine['sha256'][:12]})")
    if strict:
        raise ValueError(text + "; pass strict=False to load anyway")
    logger.warning("load_adapter (strict=False): %s", text)


def _check_cells(net, mapping, meta, path, strict):
    cells = lora_cells(net)
    targets = set(mapping.values())
    scaling = adapter_scaling(meta)
    for name, cell in cells.items():
        if f"{name}.{LORA_A}" not in targets and f"{name}.{LORA_B}" not in targets:
            continue
        if cell.merged:
            raise ValueError(f"{name} is merged: unmerge() it before loading an adapter onto it")
        if scaling is not None and not math.isclose(cell.scaling, scaling, rel_tol=1e-6):
            text = (f"{path} was trained with scaling {scaling:g} but {name} computes with {cell.scaling:g} "
                    f"(lora_alpha={cell.lora_alpha}, rank={cell.lora_rank}, rslora={cell.use_rslora}); build the "
                    "network with pet_config_from_metadata(metadata)")
            if strict:
                raise ValueError(text)
            logger.warning("load_adapter (strict=False): %s", text)


# ------------------------------------------------------------------------------------------------
# sharded saves
# ------------------------------------------------------------------------------------------------
def _rank_files(src, pattern):
    if isinstance(src, (list, tuple)):
        files = list(src)
        for f in files:
            _checks.check_str("src file", f)
        return files
    _checks.check_str("src", src)
    if not os.path.isdir(src):
        raise NotADirectoryError(f"src must be a directory holding rank_*/ subdirectories or a list of files, got {src}")
    rank_dirs = glob.glob(os.path.join(src, "rank_*"))
    ranks = []
    for d in rank_dirs:
        tail = os.path.basename(d)[len("rank_"):]
        if os.path.isdir(d) and tail.isdigit():
            ranks.append((int(tail), d))
    if not ranks:
        raise FileNotFoundError(f"{src}: no rank_<N>/ subdirectories")
    files = []
    for rank, d in sorted(ranks):
        found = sorted(glob.glob(os.path.join(d, pattern)))
        found = [f for f in found if os.path.splitext(f)[1] in _SUFFIX and not os.path.basename(f).startswith(".")]
        if not found:
            raise FileNotFoundError(f"{d}: no checkpoint matching {pattern!r}")
        newest = max(found, key=os.path.getmtime)
        if len(found) > 1:
            logger.info("gather_sharded_adapter: rank %d has %d files, using the newest %s", rank, len(found), newest)
        files.append(newest)
    return files


def gather_sharded_adapter(src, out, format=None, pattern="*", atol=0.0):  # pylint: disable=redefined-builtin
    """Gather per-rank saves (``rank_*/...ckpt``, as MindFormers writes them) into one adapter file,
    when the LoRA weights are replicated across ranks (data parallel).

    Args:
        src: a directory with ``rank_<N>/`` subdirectories (the newest file matching ``pattern`` in
            each is used) or a list of files, one per rank.
        out: the adapter file to write (.ckpt / .safetensors).
        atol: the largest abs difference across ranks still called replicated (default 0: equal).

    Returns:
        The metadata written (the first rank's, when it carries one).

    Raises:
        ValueError: the ranks disagree on names or shapes (model-parallel shards: transform the
            checkpoints with MindSpore first) or values; no LoRA weights; an unreadable file.
    """
    fmt = check_output_path(out, format)
    files = _rank_files(src, pattern)
    first_tensors, first_meta = None, None
    for path in files:
        tensors, meta = read_adapter(path)
        ours = bool(meta.get("pet_config") is not None or meta.get("source"))
        keep = {k: v for k, v in tensors.items() if (ours or _is_lora_key(k)) and not is_state_key(k)}
        if not keep:
            raise ValueError(f"{path} holds no LoRA weights")
        if first_tensors is None:
            first_tensors, first_meta, first_path = keep, meta, path
            continue
        if set(keep) != set(first_tensors):
            diff = set(keep) ^ set(first_tensors)
            raise ValueError(f"{path} and {first_path} hold different adapter keys: {short_list(diff)}")
        for name, array in keep.items():
            ref = first_tensors[name]
            if array.shape != ref.shape:
                raise ValueError(f"{name} has shape {list(array.shape)} in {path} but {list(ref.shape)} in "
                                 f"{first_path}: the LoRA weights are sharded (model parallel), not replicated")
            delta = float(np.max(np.abs(array.astype(np.float64) - ref.astype(np.float64)))) if array.size else 0.0
            if delta > atol:
                raise ValueError(f"{name} differs between {path} and {first_path} (max abs diff {delta:g}): "
                                 "the ranks are not replicas of one adapter")
    meta = first_meta or None
    write_checkpoint(first_tensors, out, fmt, metadata=meta)
    logger.info("gather_sharded_adapter: %d ranks agree on %d tensors -> %s", len(files), len(first_tensors), out)
    return meta or {}
