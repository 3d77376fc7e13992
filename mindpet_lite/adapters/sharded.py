"""Per-rank adapter saves put together into one file: which dimension each rank holds comes from a
MindSpore strategy file or from the Megatron split of each layer kind (column layers hold rows of B,
row layers columns of A), and `mindspore.merge_sliced_parameter` joins the slices. Replicated
factors must agree across ranks (within `atol`); everything is checked before the file is written.
"""
import logging
import math
import os

import mindspore as ms
import numpy as np
from mindspore import Parameter, Tensor
from mindspore.train import node_strategy_pb2

from mindpet_lite import _checks, _files
from mindpet_lite.adapters import metadata as _meta
from mindpet_lite.adapters.io import read_adapter
from mindpet_lite.adapters.names import LORA_MARK, is_lora_name, is_state_key, normalize_name, parallel_kind
from mindpet_lite.delta.lora import LORA_A, LORA_B, LORA_MAGNITUDE

logger = logging.getLogger(__name__)

__all__ = ["gather_sharded_adapter"]


def _rank_files(src, pattern):
    """One file per rank: the given list, or the newest matching file of each ``rank_<N>/`` folder."""
    if isinstance(src, (list, tuple)):
        for f in src:
            _checks.check_str("src file", f)
        return list(src)
    _checks.check_str("src", src)
    if not os.path.isdir(src):
        raise NotADirectoryError(f"src must be a directory holding rank_*/ subdirectories or a list of files, got {src}")
    ranks = _files.rank_folders(src)
    if not ranks:
        raise FileNotFoundError(f"{src}: no rank_<N>/ subdirectories")
    files = []
    for rank, folder in ranks:
        found = _files.checkpoint_files_in(folder, pattern)
        if not found:
            raise FileNotFoundError(f"{folder}: no checkpoint matching {pattern!r}")
        chosen = _files.newest(found)
        if len(found) > 1:
            logger.info("gather_sharded_adapter: rank %d has %d files, using the newest %s", rank, len(found), chosen)
        files.append(chosen)
    return files


def gather_sharded_adapter(src, out, format=None, pattern="*", atol=0.0, overwrite=False,  # pylint: disable=redefined-builtin,too-many-arguments
                           tensor_parallel=None, strategy_file=None):
    """Gather per-rank saves (``rank_*/...ckpt``, as MindFormers writes them) into one adapter file.

    Which dimension each rank holds comes from, first that applies:

    * ``strategy_file``: the parallel strategy the run saved (``strategy_ckpt_save_file``, protobuf
      ``.ckpt`` or ``.json``), read by ``mindspore.build_searched_strategy``; each parameter it lists is
      put together by ``mindspore.merge_sliced_parameter``, the others must be replicas.
    * ``tensor_parallel=N``: Megatron's split of the projections by their names (``names.parallel_kind``):
      a column-parallel layer (linear_qkv, linear_fc1, wq/wk/wv/w1/w3) holds rows of B (and of a DoRA
      magnitude) and the whole A, a row-parallel layer (linear_proj, linear_fc2, wo, w2) columns of A and
      the whole B. Rank r holds part ``r % N`` (MindSpore's device order: tensor parallel innermost);
      the layouts are handed to ``mindspore.merge_sliced_parameter`` as the strategy file would be.
    * neither: the weights must be replicated (data parallel) and rank 0's are written.

    Every replicated piece is checked equal across the ranks that hold it (up to ``atol``) and every
    slice's shape against the layout before anything is written.

    Args:
        src: a directory with ``rank_<N>/`` subdirectories (the newest file matching ``pattern`` in
            each is used) or a list of files, one per rank, in rank order.
        out: the adapter file to write (.ckpt / .safetensors).
        atol: the largest abs difference across ranks still called replicated (default 0: equal).
        tensor_parallel (int): the run's tensor_model_parallel_size (model_parallel).
        strategy_file (str): the run's strategy file (not with ``tensor_parallel``).

    Returns:
        The metadata written (the first rank's, when it carries one; a gathered shard's base
        fingerprint, taken from one rank's slices, is dropped).

    Raises:
        ValueError: the ranks disagree on names, replicated values or slice shapes (named); sharded
            weights without a layout; a number of files the layout does not have; no LoRA weights.
    """
    fmt = _files.check_output_path(out, format)
    files = _rank_files(src, pattern)
    if tensor_parallel is not None and strategy_file is not None:
        raise ValueError("give tensor_parallel or strategy_file, not both (the strategy file tells the split)")
    if tensor_parallel is not None:
        _checks.check_positive_int("tensor_parallel", tensor_parallel)
        if len(files) % tensor_parallel:
            raise ValueError(f"tensor_parallel={tensor_parallel} needs a multiple of {tensor_parallel} rank files, "
                             f"got {len(files)}")
    if strategy_file is not None:
        _check_strategy_file(strategy_file)
    _files.check_new_output(out, ([src] if isinstance(src, str) else files) + ([strategy_file] if strategy_file else []),
                            overwrite)
    ranks = []
    for path in files:
        tensors, meta = read_adapter(path)
        ours = _meta.is_ours(meta)
        keep = {k: v for k, v in tensors.items() if (ours or is_lora_name(k)) and not is_state_key(k)}
        if not keep:
            raise ValueError(f"{path} holds no LoRA weights")
        if ranks and set(keep) != set(ranks[0][1]):
            diff = set(keep) ^ set(ranks[0][1])
            raise ValueError(f"{path} and {files[0]} hold different adapter keys: {_checks.short_list(diff)}")
        ranks.append((path, keep, meta))
    if strategy_file is not None:
        layouts = _strategy_layouts(strategy_file)
    elif tensor_parallel is not None:
        layouts = _tp_layouts(ranks[0][1], len(files), tensor_parallel)
    else:
        layouts = {}
    gathered = {name: _gather_one(name, [(path, keep[name]) for path, keep, _ in ranks], layouts.get(name), atol)
                for name in ranks[0][1]}
    meta = dict(ranks[0][2]) or None
    if meta is not None and layouts:
        meta.pop("base_fingerprint", None)
        meta["gathered_from"] = {"ranks": len(files), "tensor_parallel": tensor_parallel,
                                 "strategy_file": os.path.basename(strategy_file) if strategy_file else None}
    _meta.write_adapter_file(gathered, out, meta, fmt)
    logger.info("gather_sharded_adapter: %d ranks, %d tensors (%d sharded) -> %s", len(files), len(gathered),
                sum(name in layouts for name in gathered), out)
    return meta or {}


def _check_strategy_file(path, what="strategy_file"):
    _checks.check_str(what, path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{what} {path} is not a file (the strategy_ckpt_save_file of the run: a protobuf "
                                ".ckpt or a .json)")


def _strategy_layouts(strategy_file):
    """``{parameter name: ParallelLayouts}`` of a MindSpore strategy file (its own reader)."""
    try:
        return dict(ms.build_searched_strategy(strategy_file))
    except (ValueError, TypeError, RuntimeError) as err:
        raise ValueError(f"strategy_file {strategy_file}: not a MindSpore strategy file ({err})") from err


def _tp_layouts(tensors, n_files, tp):
    """The layouts a strategy file would give the adapter's LoRA tensors under Megatron's split, built as
    MindSpore's own ``ParallelLayouts`` (dev matrix [dp, tp]; tensor_map 0 is the tp axis)."""
    layouts = {}
    for name, array in tensors.items():
        module, _, leaf = normalize_name(name).rpartition(".")
        kind = parallel_kind(module) if LORA_MARK in leaf else None
        tensor_map = None
        if kind == "column" and leaf in (LORA_B, LORA_MAGNITUDE):
            tensor_map = [0] + [-1] * (array.ndim - 1)
        elif kind == "row" and leaf == LORA_A:
            tensor_map = [-1, 0]
        if tensor_map is not None and tp > 1:
            layouts[name] = _parallel_layout([n_files // tp, tp], tensor_map)
    return layouts


def _parallel_layout(dev_matrix, tensor_map):
    layout = node_strategy_pb2.ParallelLayouts()
    layout.dev_matrix.add().dim.extend(dev_matrix)
    layout.tensor_map.add().dim.extend(tensor_map)
    layout.param_split_shape.add()
    layout.indices_offset.add()
    layout.field, layout.opt_weight_shard_step, layout.opt_weight_shard_size = 0, 0, 0  # no optimizer shard
    return layout


def _slice_ids(layout, n_ranks):
    """Per rank, the index of the slice it holds (ranks holding the same slice are replicas)."""
    dev_matrix = list(layout.dev_matrix[0].dim)
    tensor_map = list(layout.tensor_map[0].dim)
    if math.prod(dev_matrix) != n_ranks:
        raise ValueError(f"the layout's device matrix {dev_matrix} has {math.prod(dev_matrix)} devices but there are "
                         f"{n_ranks} rank files")
    ids = []
    for rank in range(n_ranks):
        coords = np.unravel_index(rank, dev_matrix)
        ids.append(tuple(int(coords[len(dev_matrix) - 1 - t]) for t in tensor_map if t != -1))
    return ids


def _gather_one(name, parts, layout, atol):
    """One tensor from its per-rank ``[(path, array)]``: replicas checked equal, slices merged by
    ``mindspore.merge_sliced_parameter``."""
    ids = _slice_ids(layout, len(parts)) if layout is not None else [()] * len(parts)
    first_of = {}
    for (path, array), sid in zip(parts, ids):
        if sid not in first_of:
            first_of[sid] = (path, array)
            continue
        ref_path, ref = first_of[sid]
        if array.shape != ref.shape:
            hint = ("" if layout is not None else ": the LoRA weights are sharded (model parallel), not replicated; "
                    "pass tensor_parallel= (--tensor-parallel) or strategy_file= (--strategy-file)")
            raise ValueError(f"{name} has shape {list(array.shape)} in {path} but {list(ref.shape)} in {ref_path}{hint}")
        delta = float(np.max(np.abs(array.astype(np.float64) - ref.astype(np.float64)))) if array.size else 0.0
        if delta > atol:
            what = ("the ranks are not replicas of one adapter" if layout is None else
                    "the ranks that hold the same slice disagree")
            module, _, leaf = normalize_name(name).rpartition(".")
            kind = parallel_kind(module)
            sliced = (kind == "column" and leaf in (LORA_B, LORA_MAGNITUDE)) or (kind == "row" and leaf == LORA_A)
            if layout is None and sliced:
                what += (f"; in a tensor-parallel run each rank holds a slice of it ({kind}-parallel layer): pass "
                         "tensor_parallel= (--tensor-parallel) or strategy_file= (--strategy-file)")
            elif kind is not None:
                what += f" ({kind}-parallel layer: its {'A' if kind == 'column' else 'B'} is replicated on every rank)"
            raise ValueError(f"{name} differs between {path} and {ref_path} (max abs diff {delta:g}): {what}")
    if layout is None:
        return parts[0][1]
    shapes = {tuple(a.shape) for _, a in first_of.values()}
    if len(shapes) != 1:
        raise ValueError(f"{name}: the ranks hold slices of different shapes {sorted(map(list, shapes))}; the layout "
                         "splits it evenly")
    slices = [Parameter(Tensor(first_of[sid][1]), name=name) for sid in ids]
    try:
        return ms.merge_sliced_parameter(slices, {name: layout}).asnumpy()
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"{name}: mindspore.merge_sliced_parameter refused the slices: {err}") from err
