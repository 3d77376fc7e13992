"""Merge an adapter into base weights for serving: W' = W + s·B·A (and back: W = W' - s·B·A).

* s comes from the adapter's metadata, per layer (its own alpha / rank from rank_pattern / alpha_pattern;
  alpha / sqrt(rank) with rsLoRA); an explicit
  ``scaling`` only overrides it. An adapter without metadata (MindFormers / mcore files) needs an explicit
  ``scaling``: it is never guessed (MindFormers' transform_ckpt_lora.py silently uses 1).
* The update is computed in float32 and added to W in float32, then cast back to W's dtype once: a
  bf16/fp16 base is rounded a single time instead of once per operation.
* Layout: ``nn.Dense`` and Hugging Face store W as [out, in]; MindFormers' Linear with
  ``transpose_b=False`` stores [in, out]. ``layout='auto'`` reads it from the shapes: a non-square W
  tells its own layout, and square weights take the one layout the non-square ones agree on (one
  checkpoint has one convention); with no non-square weight they take the layout the adapter's
  metadata records (``weight_layout``: how the network it was trained on stored W). Otherwise square
  weights are an error unless ``layout='out_in'`` or ``'in_out'`` (``--layout``) is given.
* DoRA adapters (a ``mindpet_delta_lora_magnitude`` m per pair) merge to W' = m / ‖W + s·B·A‖_row ⊙
  (W + s·B·A), the row norms taken over the [out, in] weight whatever the layout; they cannot be
  unmerged from a checkpoint (W' no longer tells the norms; a LoRADense keeps them for its unmerge).
* MindFormers mcore bases (``model.decoder.layers.N.self_attention.linear_qkv.weight``, fused q/k/v rows;
  ``mlp.linear_fc1.weight``, fused gate/up rows; ``linear_proj``, ``linear_fc2``) merge like any other: a
  LoRA pair trained on a fused layer is a pair of the whole fused weight [out, in], so W' = W + s·B·A
  holds for every row whatever the fused layout (``adapters/mcore.py``).
* A base saved as ``rank_<N>/`` parts of a tensor-parallel run (``base`` a directory) is first made one
  full checkpoint by MindSpore's own ``mindspore.transform_checkpoints`` with the run's strategy file
  (``base_strategy``, ``--base-strategy``; destination strategy None = unsliced), then merged.
* Adapter tensors that are not LoRA pairs (parameters ``freeze_exclude`` left trainable) replace the
  base values when merging; unmerge cannot restore those and refuses.

Everything is checked before anything is written; outputs are written atomically.
"""
import logging
import math
import os
import tempfile

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from mindpet_lite import _checks, _files
from mindpet_lite.adapters import metadata as _meta
from mindpet_lite.adapters.io import load_adapter, read_adapter
from mindpet_lite.adapters.named import named_adapter_tensors
from mindpet_lite.adapters.names import (LORA_MARK, is_lora_name, is_state_key, resolve_names, split_lora_pairs,
                                         split_magnitudes)
from mindpet_lite.delta.lora import lora_scaling
from mindpet_lite.delta.lora_adapters import DEFAULT_ADAPTER
from mindpet_lite.delta.lora_dora import dora_merged
from mindpet_lite.graph.freeze import lora_cells

logger = logging.getLogger(__name__)

__all__ = ["merge_weights", "merge_checkpoint", "unmerge_checkpoint", "merge_full_checkpoint", "merge_adapter",
           "full_base_from_ranks", "LAYOUTS"]

LAYOUTS = ("auto", "out_in", "in_out")


# methods whose adapter is no change of the base weights (merge refuses them, saying why)
_NON_LINEAR = "has a non-linearity between its down and up projections, so it is no change of a dense weight"
_PREFIX = "adds key / value slots to every attention layer, not a weight update"
NOT_MERGEABLE = {"adapter": _NON_LINEAR, "low_rank_adapter": _NON_LINEAR, "ptuning2": _PREFIX, "prefixtuning": _PREFIX}


def _check_scaling(scaling):
    if scaling is None:
        return None
    if not _checks.is_number(scaling) or not math.isfinite(scaling):
        raise TypeError(f"scaling must be a finite int or float, got {_checks.describe(scaling)}")
    return float(scaling)


def _as_adapter(adapter):
    """(tensors, metadata) from a path, a (tensors, metadata) pair or a plain dict of tensors."""
    if isinstance(adapter, str):
        return read_adapter(adapter)
    if isinstance(adapter, tuple) and len(adapter) == 2 and isinstance(adapter[1], dict):
        return _files.to_numpy_dict(adapter[0], "adapter"), dict(adapter[1])
    if isinstance(adapter, dict):
        return _files.to_numpy_dict(adapter, "adapter"), {}
    raise TypeError("adapter must be a file path, a (tensors, metadata) pair or a dict of tensors, "
                    f"got {_checks.describe(adapter)}")


def _as_base(base, base_strategy=None):
    if isinstance(base, str) and (os.path.isdir(base) or base_strategy is not None):
        return full_base_from_ranks(base, base_strategy)
    if isinstance(base, str):
        return _files.read_checkpoint(base)[0]
    return _files.to_numpy_dict(base, "base")


def full_base_from_ranks(src, strategy_file):
    """``{name: array}`` of the whole base that a tensor-parallel run saved as ``src/rank_<N>/*.ckpt``
    (or .safetensors), put together by ``mindspore.transform_checkpoints`` with the run's strategy file
    (the newest file per rank is not chosen here: MindSpore takes each rank folder's last file in
    lexicographic order)."""
    _checks.check_str("base", src)
    if not os.path.isdir(src) or not _files.rank_folders(src):
        raise NotADirectoryError(f"base {src} must be a directory of rank_<N>/ folders to use a strategy file")
    if strategy_file is None:
        raise ValueError(f"base {src} is a directory of rank parts: pass base_strategy= (--base-strategy), the "
                         "strategy file the run saved, to put them together with mindspore.transform_checkpoints")
    _checks.check_str("base_strategy", strategy_file)
    if not os.path.isfile(strategy_file):
        raise FileNotFoundError(f"base_strategy {strategy_file} is not a file")
    found = [f for _, folder in _files.rank_folders(src) for f in _files.checkpoint_files_in(folder)]
    fmt = "safetensors" if found and all(f.endswith(".safetensors") for f in found) else "ckpt"
    with tempfile.TemporaryDirectory(prefix="mindpet_lite_base_") as tmp:
        try:
            ms.transform_checkpoints(src, tmp, "base", strategy_file, None, output_format=fmt)
        except (ValueError, TypeError, KeyError) as err:
            raise ValueError(f"mindspore.transform_checkpoints could not put {src} together with {strategy_file}: "
                             f"{err}") from err
        outputs = _files.checkpoint_files_in(os.path.join(tmp, "rank_0"))
        if len(outputs) != 1:
            raise RuntimeError(f"mindspore.transform_checkpoints wrote {len(outputs)} files for rank 0, expected one")
        logger.info("merge: %s put together by mindspore.transform_checkpoints (%s)", src, strategy_file)
        return _files.read_checkpoint(outputs[0])[0]


def _scale_for(meta, scaling, lora_alpha=None, use_rslora=False):
    """A function (module, rank) -> s, from an explicit scaling, an explicit alpha, or the metadata
    (each layer's own rank and alpha: rank_pattern / alpha_pattern)."""
    scaling = _check_scaling(scaling)
    if scaling is not None:
        return lambda module, rank: scaling
    if lora_alpha is not None:
        _checks.check_lora_alpha("lora_alpha", lora_alpha)
        _checks.check_bool("use_rslora", use_rslora)
        return lambda module, rank: lora_scaling(lora_alpha, rank, use_rslora)
    config = _meta.lora_config(meta)  # read once: its scalings and ranks
    if config is None:
        s = _meta.adapter_scaling(meta)
        if s is None:
            raise ValueError("the adapter carries no metadata giving its scaling (MindFormers / mcore files hold no "
                             "lora_alpha): pass scaling= (lora_alpha / lora_rank) explicitly")
        return lambda module, rank: s

    def from_meta(module, rank):
        if rank != config.rank_for(module):
            via = " (its rank_pattern)" if config.rank_for(module) != config.lora_rank else ""
            raise ValueError(f"the adapter's metadata says lora_rank={config.rank_for(module)}{via} but a pair has "
                             f"rank {rank} ({module}): the metadata does not describe these weights; pass scaling= "
                             "explicitly")
        return config.scaling_for(module)
    return from_meta


def _resolve_layouts(plan, layout, recorded=None):
    """plan: {module: (W shape, out, in)} -> {module: 'out_in' | 'in_out'}; ``recorded`` is the layout
    the adapter's metadata gives, used for square weights when no non-square weight tells."""
    _checks.check_choice("layout", layout, LAYOUTS)
    decided, square, bad = {}, [], []
    for module, (shape, out, inn) in plan.items():
        if layout != "auto":
            want = (out, inn) if layout == "out_in" else (inn, out)
            if shape != want:
                bad.append(f"{module}: base {list(shape)} vs {layout} {list(want)}")
            decided[module] = layout
        elif out == inn and shape == (out, inn):
            square.append(module)
        elif shape == (out, inn):
            decided[module] = "out_in"
        elif shape == (inn, out):
            decided[module] = "in_out"
        else:
            bad.append(f"{module}: base {list(shape)} fits neither [out, in] = {[out, inn]} nor [in, out]")
    if bad:
        raise ValueError(f"base weights do not fit the adapter (another architecture or rank?): {'; '.join(bad[:8])}")
    if square:
        seen = set(decided.values())
        if not seen and recorded in LAYOUTS[1:]:
            seen = {recorded}
        if len(seen) != 1:
            why = ("no non-square weight and no weight_layout in the adapter's metadata tell the layout" if not seen
                   else "the non-square weights use both layouts")
            raise ValueError(f"cannot tell the layout of square weights ({', '.join(sorted(square)[:4])}...): {why}; "
                             "pass --layout out_in (nn.Dense, Hugging Face) or --layout in_out (a MindFormers "
                             "Linear with transpose_b=False); API: layout='out_in' / 'in_out'")
        only = seen.pop()
        decided.update({m: only for m in square})
    return decided


def merge_weights(base, adapter, scaling=None, layout="auto", unmerge=False, lora_alpha=None, use_rslora=False,  # pylint: disable=too-many-arguments
                  base_strategy=None):
    """Merge (or unmerge) an adapter into a dict of base weights, in memory.

    Args:
        base: ``{name: array/Tensor}``, a checkpoint path, or a directory of ``rank_<N>/`` parts (with
            ``base_strategy``).
        adapter: a path, a ``(tensors, metadata)`` pair (as :func:`read_adapter` returns) or a dict of
            tensors (then ``scaling`` or ``lora_alpha`` is required).
        scaling: overrides the metadata's s.
        layout: 'auto', 'out_in' or 'in_out' (see the module docstring).
        unmerge: subtract instead of add.
        lora_alpha, use_rslora: give s as alpha / r per pair (r read from the shapes) when there is no
            metadata and no scaling.
        base_strategy: the strategy file of a base saved as rank parts (:func:`full_base_from_ranks`).

    Returns:
        A new ``{name: numpy array}`` with every base entry; merged weights keep their dtype.

    Raises:
        ValueError: a LoRA pair without base weight (named), shapes that do not fit, unknown scaling,
            an ambiguous layout, extras on unmerge.
    """
    tensors, meta = _as_adapter(adapter)
    pet_type = _meta.pet_type_of(meta)
    if pet_type in NOT_MERGEABLE:
        raise ValueError(f"merge: a {pet_type} adapter cannot be merged into base weights: it "
                         f"{NOT_MERGEABLE[pet_type]} (load it onto a network built with its pet_config instead)")
    weights = _as_base(base, base_strategy)
    magnitudes, rest = split_magnitudes(tensors)
    pairs, extras = split_lora_pairs(rest)
    _check_magnitudes(magnitudes, pairs, unmerge)
    if not pairs and not extras:
        raise ValueError("the adapter holds no LoRA pairs and no other tensors")
    _checks.check_finite_arrays("the adapter", tensors)  # a NaN folded into W cannot be taken out again
    scale = _scale_for(meta, scaling, lora_alpha, use_rslora) if pairs else None
    if unmerge and extras:
        raise ValueError(f"cannot unmerge: the adapter carries full trained weights ({_checks.short_list(extras)}) "
                         "whose base values are not in it")

    wanted = {f"{module}.weight": module for module in pairs}
    mapping, unexpected, ambiguous = resolve_names(wanted, weights)
    if ambiguous:
        raise ValueError(f"adapter pairs match base keys ambiguously: {sorted(ambiguous.items())[:4]}")
    if unexpected:
        raise ValueError(f"base checkpoint has no weight for {len(unexpected)} adapter pairs: "
                         f"{_checks.short_list(unexpected)}")
    extra_map, extra_missing, extra_amb = resolve_names(extras, weights)
    if extra_missing or extra_amb:
        raise ValueError("base checkpoint has no entry for adapter tensors: "
                         f"{_checks.short_list(list(extra_missing) + list(extra_amb))}")

    plan = {}
    for key, base_key in mapping.items():
        a, b = pairs[wanted[key]]
        plan[key] = (tuple(weights[base_key].shape), b.shape[0], a.shape[1])
    layouts = _resolve_layouts(plan, layout, meta.get("weight_layout"))
    scales = {key: scale(wanted[key], pairs[wanted[key]][0].shape[0]) for key in mapping}  # checks before math

    out = dict(weights)
    sign = -1.0 if unmerge else 1.0
    for key, base_key in mapping.items():
        a, b = pairs[wanted[key]]
        w = weights[base_key]
        delta = np.float32(scales[key]) * (b.astype(np.float32) @ a.astype(np.float32))
        if wanted[key] in magnitudes:
            w_out_in = w.astype(np.float32).T if layouts[key] == "in_out" else w.astype(np.float32)
            merged = dora_merged(w_out_in, delta, magnitudes[wanted[key]].astype(np.float32))[0]
            out[base_key] = (merged.T if layouts[key] == "in_out" else merged).astype(w.dtype)
            continue
        if layouts[key] == "in_out":
            delta = delta.T
        out[base_key] = (w.astype(np.float32) + np.float32(sign) * delta).astype(w.dtype)
    for key, base_key in extra_map.items():
        if tuple(extras[key].shape) != tuple(weights[base_key].shape):
            raise ValueError(f"{key}: adapter {list(extras[key].shape)} vs base {list(weights[base_key].shape)}")
        out[base_key] = extras[key].astype(weights[base_key].dtype)
    logger.info("%s %d LoRA pairs (+%d full tensors)", "unmerged" if unmerge else "merged", len(mapping), len(extra_map))
    return out


def _check_magnitudes(magnitudes, pairs, unmerge):
    """Every DoRA magnitude belongs to a pair and has one value per output row; none on unmerge."""
    if not magnitudes:
        return
    if unmerge:
        raise ValueError("cannot unmerge a DoRA adapter from a checkpoint: the merged weight no longer tells the row "
                         "norms ‖W + s·B·A‖ it was divided by; merge the original base again instead")
    for module, m in magnitudes.items():
        if module not in pairs:
            raise ValueError(f"adapter: {module} has a DoRA magnitude but no LoRA pair")
        if m.shape != (pairs[module][1].shape[0],):
            raise ValueError(f"adapter: {module} has a DoRA magnitude of shape {list(m.shape)}; expected "
                             f"[{pairs[module][1].shape[0]}] (one per output row of B)")


def merge_checkpoint(base, adapter, out=None, format=None, scaling=None, layout="auto", unmerge=False,  # pylint: disable=redefined-builtin
                     lora_alpha=None, use_rslora=False, overwrite=False, base_strategy=None):
    """:func:`merge_weights`, then write ``out`` (.ckpt / .safetensors, atomically) if given: never onto
    ``base`` or ``adapter``, onto an existing file only with ``overwrite=True``.
    Returns the merged ``{name: numpy array}``."""
    if out is not None:
        _files.check_output_path(out, format)
        _files.check_new_output(out, [base, adapter, base_strategy], overwrite)
    merged = merge_weights(base, adapter, scaling, layout, unmerge, lora_alpha, use_rslora, base_strategy)
    if out is not None:
        _files.write_checkpoint(merged, out, format)
    return merged


def unmerge_checkpoint(base, adapter, out=None, format=None, scaling=None, layout="auto", overwrite=False):  # pylint: disable=redefined-builtin
    """W = W' - s·B·A: undo :func:`merge_checkpoint` (exact up to the base dtype's rounding)."""
    return merge_checkpoint(base, adapter, out, format, scaling, layout, unmerge=True, overwrite=overwrite)


def merge_full_checkpoint(src, out=None, format=None, scaling=None, lora_alpha=None, use_rslora=False,  # pylint: disable=redefined-builtin
                          layout="auto", overwrite=False):
    """Merge a MindFormers LoRA checkpoint (base and LoRA weights in one file) into a plain base.

    The LoRA pairs are added to their base weights; the LoRA entries and training states
    (``adam_m.*``, ``epoch_num``, ...) are dropped. Such files carry no lora_alpha: give ``scaling``,
    or ``lora_alpha`` (and ``use_rslora``) to take s = alpha / r with r from the shapes.
    """
    if out is not None:
        _files.check_output_path(out, format)
        _files.check_new_output(out, [src], overwrite)
    tensors = _as_base(src)
    lora = {k: v for k, v in tensors.items() if is_lora_name(k) and not is_state_key(k)}
    if not lora:
        raise ValueError(f"{src if isinstance(src, str) else 'src'} holds no LoRA weights (mindpet_delta_lora_a/_b)")
    base = {k: v for k, v in tensors.items() if k not in lora and not is_state_key(k)}
    if scaling is None and lora_alpha is None:
        raise ValueError("a MindFormers LoRA checkpoint carries no lora_alpha: pass scaling= or lora_alpha=")
    merged = merge_weights(base, (lora, {}), scaling, layout, False, lora_alpha, use_rslora)
    if out is not None:
        _files.write_checkpoint(merged, out, format)
    return merged


def _check_cells_mergeable(cells):
    """Refuse before the first cell is merged: a cell without its own weight (a tied mcore output layer,
    the weight comes with the call) or with non-finite factors would otherwise stop the loop half way,
    leaving some layers merged and others not."""
    for path, cell in cells.items():
        if getattr(cell, "weight", None) is None:
            raise ValueError(f"{path} has no weight of its own (a tied layer: the weight comes with the call), so "
                             "the network cannot be merged in place; merge the checkpoints instead (merge_checkpoint)")
        if not cell.merged:
            for name, param in cell.parameters_and_names():
                if name.rsplit(".", 1)[-1].startswith(LORA_MARK) and not np.isfinite(param.asnumpy()).all():
                    raise ValueError(f"{path}: {name} holds NaN / Inf; nothing was merged")


def merge_adapter(net_or_base, adapter=None, scaling=None, out=None, format=None, layout="auto", strict=True,  # pylint: disable=redefined-builtin
                  overwrite=False, adapter_name=None):
    """Merge an adapter into a network or a base checkpoint.

    * A network with LoRA cells: the adapter (if given) is loaded with :func:`load_adapter`, then every
      LoRA cell is merged in place (W += s·B·A in float32, cast back). Returns the network.
    * A network without LoRA cells (a plain base model): the adapter's pairs are added to the weights of
      the matching Dense layers in place. Returns the network.
    * A ``{name: array}`` dict or a checkpoint path: :func:`merge_checkpoint` (writes ``out`` if given).
      Returns the merged dict.
    * A network and ``adapter_name`` (a named adapter, not "default"): the base weights with that adapter
      merged, ``{name: array}`` (written to ``out`` if given); the network is unchanged, its cells keep
      every adapter unmerged (a copy to deploy one adapter of a multi-adapter network).
    """
    if isinstance(net_or_base, nn.Cell) and adapter_name not in (None, DEFAULT_ADAPTER):
        return _merge_named(net_or_base, adapter_name, adapter, scaling, out, format, layout, overwrite)
    if isinstance(net_or_base, nn.Cell):
        net = net_or_base
        cells = lora_cells(net)
        if cells:
            if scaling is not None:
                raise ValueError("scaling cannot be overridden when merging LoRA cells (each has its own); "
                                 "merge the checkpoint instead")
            if adapter is not None:
                load_adapter(net, adapter, strict=strict)
            _check_cells_mergeable(cells)
            for cell in cells.values():
                cell.merge()
            logger.info("merge_adapter: merged %d LoRA cells", len(cells))
            return net
        if adapter is None:
            raise ValueError("the network has no LoRA cells: give the adapter to merge into it")
        params = dict(net.parameters_and_names())
        base = {name: _files.to_numpy(p) for name, p in params.items()}
        merged = merge_weights(base, adapter, scaling, layout)
        changed = [n for n in params if merged[n] is not base[n]]
        for name in changed:
            params[name].set_data(Tensor(merged[name]).astype(params[name].dtype))
        logger.info("merge_adapter: updated %d weights of the network", len(changed))
        return net
    if adapter is None:
        raise ValueError("adapter is required to merge into a checkpoint")
    return merge_checkpoint(net_or_base, adapter, out, format, scaling, layout, overwrite=overwrite)



def _merge_named(net, name, adapter, scaling, out, format, layout, overwrite):  # pylint: disable=redefined-builtin
    if adapter is not None or scaling is not None:
        raise ValueError(f"adapter_name={name!r} merges the network's own adapter of that name: adapter and "
                         "scaling must be None (load a file first with load_adapter(..., adapter_name=))")
    merged = sorted(path for path, cell in lora_cells(net).items() if cell.merged)
    if merged:
        raise ValueError(f"merge_adapter(adapter_name={name!r}): {len(merged)} LoRA cells are merged (their weights "
                         f"hold the 'default' adapter), e.g. {merged[0]}: unmerge them first")
    tensors, config = named_adapter_tensors(net, name)
    meta = _meta.build_metadata(config, None, weight_layout=_meta.weight_layout(net))
    base = {n: _files.to_numpy(p) for n, p in net.parameters_and_names() if LORA_MARK not in n}
    return merge_checkpoint(base, (tensors, meta), out, format, layout=layout, overwrite=overwrite)
