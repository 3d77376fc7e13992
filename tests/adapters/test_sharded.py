"""Tensor-parallel files: gather per-rank adapter parts by the parallel layout (Megatron's split or a
MindSpore strategy file), and merge into a base saved as rank_* parts via mindspore.transform_checkpoints.

The rank files are made by slicing a single-process adapter in numpy (column layers: rows of B, whole A;
row layers: columns of A, whole B), and the strategy file is written by hand with MindSpore's protobuf
(a semi-auto parallel compile, which writes it in a real run, does not run on CPU)."""
import os

import mindspore as ms
import numpy as np
import pytest
from mindspore.train import node_strategy_pb2

from mindpet_lite import _files
from mindpet_lite.adapters.io import read_adapter
from mindpet_lite.adapters.sharded import gather_sharded_adapter
from mindpet_lite.adapters.merge import merge_checkpoint
from mindpet_lite.adapters.metadata import write_adapter_file
from mindpet_lite.cli import main
from tests import reference as ref

R, ALPHA, HIDDEN, QKV, FFN = 4, 8, 16, 32, 24
MODULES = (("self_attention.linear_qkv", QKV, HIDDEN, "column"), ("self_attention.linear_proj", HIDDEN, HIDDEN, "row"),
           ("mlp.linear_fc1", 2 * FFN, HIDDEN, "column"), ("mlp.linear_fc2", HIDDEN, FFN, "row"))
META = {"source": "mindpet_lite", "scaling": ALPHA / R, "base_fingerprint": {"sha256": "x", "params": 1, "numel": 1},
        "pet_config": {"pet_type": "lora", "lora_rank": R, "lora_alpha": ALPHA,
                       "target_modules": ".*linear_qkv|.*linear_proj|.*linear_fc1|.*linear_fc2"}}


def _adapter(rng, layers=2):
    tensors = {}
    for i in range(layers):
        for module, out, inn, _ in MODULES:
            path = f"model.decoder.layers.{i}.{module}"
            tensors[f"{path}.mindpet_delta_lora_a"] = rng.standard_normal((R, inn)).astype(np.float32)
            tensors[f"{path}.mindpet_delta_lora_b"] = rng.standard_normal((out, R)).astype(np.float32)
    return tensors


def _kind(name):
    return next(kind for module, _, _, kind in MODULES if f".{module}." in name)


def _split_dim(name):
    """Which dim a rank holds a slice of (None: whole), Megatron's split written out here."""
    column = _kind(name) == "column"
    if name.endswith("_b"):
        return 0 if column else None
    return None if column else 1


def _rank_part(tensors, tp_rank, tp):
    out = {}
    for name, array in tensors.items():
        dim = _split_dim(name)
        out[name] = array if dim is None else np.split(array, tp, axis=dim)[tp_rank]
    return out


def _write_ranks(root, tensors, tp, dp=1, fmt="ckpt"):
    for rank in range(tp * dp):
        os.makedirs(root / f"rank_{rank}", exist_ok=True)
        write_adapter_file(_rank_part(tensors, rank % tp, tp), str(root / f"rank_{rank}" / f"lora.{fmt}"), META)
    return str(root)


def _strategy_file(path, shapes_dims, dev_matrix):
    """A MindSpore strategy file (ParallelStrategyMap protobuf) giving each name the split dim (None: none)."""
    strategy = node_strategy_pb2.ParallelStrategyMap()
    strategy.current_stage = 1
    item = strategy.parallel_strategy_item.add()
    item.node_name = "MatMul-op0"
    item.parallel_strategys.stage = 0
    for name, (ndim, dim) in shapes_dims.items():
        layout_item = strategy.parallel_layout_item.add()
        layout_item.param_name = name
        layout = layout_item.parallel_layouts
        layout.dev_matrix.add().dim.extend(dev_matrix)
        layout.tensor_map.add().dim.extend([0 if d == dim else -1 for d in range(ndim)])
        layout.param_split_shape.add()
        layout.indices_offset.add()
        layout.field, layout.opt_weight_shard_step, layout.opt_weight_shard_size = 0, 0, 0  # no optimizer shard
    with open(path, "wb") as f:
        f.write(strategy.SerializeToString())
    return str(path)


# ------------------------------------------------------------------------------------------------
# gather
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("tp,dp", [(2, 1), (2, 2), (4, 1)])
def test_gather_tensor_parallel_equals_single_process(tmp_path, rng, tp, dp):
    tensors = _adapter(rng)
    src = _write_ranks(tmp_path / "run", tensors, tp, dp)
    out = str(tmp_path / "gathered.safetensors")
    meta = gather_sharded_adapter(src, out, tensor_parallel=tp)
    got, meta_back = read_adapter(out)
    assert sorted(got) == sorted(tensors)
    for name, array in tensors.items():
        np.testing.assert_array_equal(got[name], array)
    assert meta_back == meta and meta["gathered_from"] == {"ranks": tp * dp, "tensor_parallel": tp,
                                                           "strategy_file": None}
    assert "base_fingerprint" not in meta  # a rank's fingerprint is of its slices


def test_gather_with_strategy_file(tmp_path, rng):
    tensors = _adapter(rng, layers=1)
    src = _write_ranks(tmp_path / "run", tensors, tp=2)
    strategy = _strategy_file(tmp_path / "strategy.ckpt", {n: (a.ndim, _split_dim(n)) for n, a in tensors.items()},
                              [2])
    out = str(tmp_path / "gathered.ckpt")
    gather_sharded_adapter(src, out, strategy_file=strategy)
    got, _ = read_adapter(out)
    for name, array in tensors.items():
        np.testing.assert_array_equal(got[name], array)


def test_gather_refuses_mismatched_parts(tmp_path, rng):
    tensors = _adapter(rng, layers=1)
    out = str(tmp_path / "out.ckpt")
    qkv_a = "model.decoder.layers.0.self_attention.linear_qkv.mindpet_delta_lora_a"
    proj_b = "model.decoder.layers.0.self_attention.linear_proj.mindpet_delta_lora_b"
    fc1_b = "model.decoder.layers.0.mlp.linear_fc1.mindpet_delta_lora_b"
    # a column layer's A differs between the ranks (it is replicated)
    src = _write_ranks(tmp_path / "a", tensors, tp=2)
    part, _ = read_adapter(os.path.join(src, "rank_1", "lora.ckpt"))
    part[qkv_a] = part[qkv_a] + 1.0
    write_adapter_file(part, os.path.join(src, "rank_1", "lora.ckpt"), META)
    with pytest.raises(ValueError, match=r"linear_qkv.mindpet_delta_lora_a differs between .*rank_1.*rank_0"):
        gather_sharded_adapter(src, out, tensor_parallel=2)
    # a row layer's B differs: also replicated
    src = _write_ranks(tmp_path / "b", tensors, tp=2)
    part, _ = read_adapter(os.path.join(src, "rank_0", "lora.ckpt"))
    part[proj_b] = part[proj_b] * 2.0
    write_adapter_file(part, os.path.join(src, "rank_0", "lora.ckpt"), META)
    with pytest.raises(ValueError, match="linear_proj.mindpet_delta_lora_b differs"):
        gather_sharded_adapter(src, out, tensor_parallel=2)
    # slices of different shapes
    src = _write_ranks(tmp_path / "c", tensors, tp=2)
    part, _ = read_adapter(os.path.join(src, "rank_1", "lora.ckpt"))
    part[fc1_b] = part[fc1_b][:-2]
    write_adapter_file(part, os.path.join(src, "rank_1", "lora.ckpt"), META)
    with pytest.raises(ValueError, match="linear_fc1.mindpet_delta_lora_b: the ranks hold slices of different shapes"):
        gather_sharded_adapter(src, out, tensor_parallel=2)
    # shards without a layout, a count the layout does not have, both sources, a missing key
    src = _write_ranks(tmp_path / "d", tensors, tp=2)
    with pytest.raises(ValueError, match="holds a slice of it .column-parallel layer.: pass tensor_parallel="):
        gather_sharded_adapter(src, out)
    with pytest.raises(ValueError, match="tensor_parallel=4 needs a multiple of 4 rank files, got 2"):
        gather_sharded_adapter(src, out, tensor_parallel=4)
    with pytest.raises(ValueError, match="not both"):
        gather_sharded_adapter(src, out, tensor_parallel=2, strategy_file=src)
    with pytest.raises(ValueError, match="tensor_parallel must be an int > 0, got 0"):
        gather_sharded_adapter(src, out, tensor_parallel=0)
    strategy = _strategy_file(tmp_path / "s4.ckpt", {n: (a.ndim, _split_dim(n)) for n, a in tensors.items()}, [4])
    with pytest.raises(ValueError, match=r"device matrix \[4\] has 4 devices but there are 2 rank files"):
        gather_sharded_adapter(src, out, strategy_file=strategy)
    part, _ = read_adapter(os.path.join(src, "rank_1", "lora.ckpt"))
    part.pop(fc1_b)
    write_adapter_file(part, os.path.join(src, "rank_1", "lora.ckpt"), META)
    with pytest.raises(ValueError, match="hold different adapter keys"):
        gather_sharded_adapter(src, out, tensor_parallel=2)
    assert not os.path.exists(out)


def test_cli_gather(tmp_path, rng, capsys):
    tensors = _adapter(rng, layers=1)
    src = _write_ranks(tmp_path / "run", tensors, tp=2)
    out = str(tmp_path / "g.safetensors")
    assert main(["gather", "--src", src, "--out", out, "--tensor-parallel", "2"]) == 0
    assert "2 ranks" in capsys.readouterr().out
    got, _ = read_adapter(out)
    np.testing.assert_array_equal(got["model.decoder.layers.0.mlp.linear_fc2.mindpet_delta_lora_a"],
                                  tensors["model.decoder.layers.0.mlp.linear_fc2.mindpet_delta_lora_a"])
    assert main(["gather", "--src", src, "--out", str(tmp_path / "h.ckpt")]) == 2
    assert "--tensor-parallel" in capsys.readouterr().err
    assert main(["gather", "--src", src, "--out", str(tmp_path / "h.ckpt"), "--tensor-parallel", "-1"]) == 2


# ------------------------------------------------------------------------------------------------
# merge into a base saved as rank parts (mindspore.transform_checkpoints)
# ------------------------------------------------------------------------------------------------
def _sharded_base(tmp_path, rng, tp=2, fmt="ckpt"):
    """A full mcore base, its rank_* parts (Megatron's split of W) and the strategy file describing them."""
    base = {"model.embedding.word_embeddings.weight": rng.standard_normal((40, HIDDEN)).astype(np.float32),
            "model.decoder.final_layernorm.weight": rng.standard_normal(HIDDEN).astype(np.float32)}
    dims = {"model.embedding.word_embeddings.weight": (2, None), "model.decoder.final_layernorm.weight": (1, None)}
    for module, out, inn, kind in MODULES:
        name = f"model.decoder.layers.0.{module}.weight"
        base[name] = rng.standard_normal((out, inn)).astype(np.float32)
        dims[name] = (2, 0 if kind == "column" else 1)
    for rank in range(tp):
        os.makedirs(tmp_path / "base" / f"rank_{rank}")
        ms.save_checkpoint([{"name": n, "data": ms.Tensor(a if dims[n][1] is None else
                                                          np.split(a, tp, axis=dims[n][1])[rank])}
                            for n, a in base.items()], str(tmp_path / "base" / f"rank_{rank}" / f"base.{fmt}"),
                           format=fmt)
    return base, str(tmp_path / "base"), _strategy_file(tmp_path / "strategy.ckpt", dims, [tp])


@pytest.mark.parametrize("fmt", ["ckpt", "safetensors"])
def test_merge_into_rank_parts_via_transform_checkpoints(tmp_path, rng, fmt):
    base, base_dir, strategy = _sharded_base(tmp_path, rng, fmt=fmt)
    tensors = _adapter(rng, layers=1)
    out = str(tmp_path / "merged.safetensors")
    merged = merge_checkpoint(base_dir, (tensors, META), out, base_strategy=strategy)
    assert sorted(merged) == sorted(base)
    for module, _, _, _ in MODULES:
        path = f"model.decoder.layers.0.{module}"
        want = ref.merged_weight(base[f"{path}.weight"], tensors[f"{path}.mindpet_delta_lora_a"],
                                 tensors[f"{path}.mindpet_delta_lora_b"], ALPHA / R)
        np.testing.assert_allclose(merged[f"{path}.weight"], want, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(merged["model.embedding.word_embeddings.weight"],
                                  base["model.embedding.word_embeddings.weight"])
    on_disk, _ = _files.read_checkpoint(out)
    assert sorted(on_disk) == sorted(base)


def test_merge_rank_parts_errors_and_cli(tmp_path, rng, capsys):
    _, base_dir, strategy = _sharded_base(tmp_path, rng)
    tensors = _adapter(rng, layers=1)
    adapter = str(tmp_path / "adapter.safetensors")
    write_adapter_file(tensors, adapter, META)
    with pytest.raises(ValueError, match="--base-strategy"):
        merge_checkpoint(base_dir, adapter)
    with pytest.raises(FileNotFoundError, match="base_strategy"):
        merge_checkpoint(base_dir, adapter, base_strategy=str(tmp_path / "missing.ckpt"))
    out = str(tmp_path / "merged.ckpt")
    assert main(["merge", "--base", base_dir, "--adapter", adapter, "--out", out, "--base-strategy", strategy]) == 0
    assert "merged" in capsys.readouterr().out and os.path.isfile(out)
    assert main(["merge", "--base", base_dir, "--adapter", adapter, "--out", str(tmp_path / "m2.ckpt")]) == 2
    assert "--base-strategy" in capsys.readouterr().err
