"""save_adapter / load_adapter / read_adapter / gather_sharded_adapter."""
import json
import os

import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor

from mindpet_lite import _files
from mindpet_lite.adapters import (base_fingerprint, gather_sharded_adapter, load_adapter, pet_config_from_metadata,
                                   read_adapter, save_adapter)
from mindpet_lite.adapters.metadata import write_adapter_file
from mindpet_lite.pet.config import LoraConfig
from tests.adapters.conftest import numpy_params, small_net, tiny_llama

LORA_NAMES = ["body.fc1.mindpet_delta_lora_a", "body.fc1.mindpet_delta_lora_b",
              "body.fc2.mindpet_delta_lora_a", "body.fc2.mindpet_delta_lora_b"]


def _lora(net):
    return {k: v for k, v in numpy_params(net).items() if "mindpet_delta_lora" in k}


def _snapshot(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_round_trip_with_metadata(tmp_path, suffix):
    net = small_net(rank=4, alpha=8)
    path = str(tmp_path / f"adapter{suffix}")
    meta = save_adapter(net, path)
    tensors, read_meta = read_adapter(path)
    assert sorted(tensors) == LORA_NAMES  # frozen base (fc weights, head) not saved
    for name, value in _lora(net).items():
        np.testing.assert_array_equal(tensors[name], value)
    assert read_meta == meta
    assert read_meta["pet_config"]["lora_rank"] == 4 and read_meta["pet_config"]["lora_alpha"] == 8
    assert read_meta["scaling"] == 2.0
    assert read_meta["toolkit"] == "mindpet_lite" and read_meta["toolkit_version"]
    assert read_meta["base_fingerprint"] == base_fingerprint(net)
    assert not [n for n in os.listdir(tmp_path) if n != f"adapter{suffix}"]  # no temp file left behind


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_load_into_fresh_net(tmp_path, suffix):
    net = small_net(seed=0)
    path = str(tmp_path / f"a{suffix}")
    save_adapter(net, path)
    fresh = small_net(seed=7)
    x = Tensor(np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32))
    # same base (seeded the same way), other LoRA factors
    for name, p in fresh.parameters_and_names():
        if "mindpet_delta_lora" not in name:
            p.set_data(Tensor(numpy_params(net)[name]))
    assert np.abs(fresh(x).asnumpy() - net(x).asnumpy()).max() > 1e-3
    meta = load_adapter(fresh, path)
    assert meta["pet_config"]["lora_rank"] == 4
    np.testing.assert_allclose(fresh(x).asnumpy(), net(x).asnumpy(), atol=1e-6)


def test_trainable_extras_saved_and_config_checked(tmp_path):
    net = small_net()
    net.head.weight.requires_grad = True  # freeze_exclude left the head trainable
    path = str(tmp_path / "a.safetensors")
    save_adapter(net, path, config=LoraConfig(lora_rank=4, lora_alpha=8, target_modules="fc1|fc2"))
    tensors, meta = read_adapter(path)
    assert "head.weight" in tensors and "head.bias" not in tensors
    assert meta["pet_config"]["target_modules"] == "fc1|fc2"
    with pytest.raises(ValueError, match="lora_rank=8 but body.fc1 has lora_rank=4"):
        save_adapter(net, str(tmp_path / "b.ckpt"), config=LoraConfig(lora_rank=8, target_modules="fc1"))
    with pytest.raises(ValueError, match="scaling"):
        save_adapter(net, str(tmp_path / "b.ckpt"), config=dict(lora_rank=4, lora_alpha=16, target_modules="fc"))
    assert not os.path.exists(tmp_path / "b.ckpt")


def test_mismatch_lists_missing_and_unexpected_keys(tmp_path):
    net = small_net()
    tensors = {k: v for k, v in _lora(net).items() if "fc2" not in k}
    tensors["body.fc9.mindpet_delta_lora_a"] = np.zeros((4, 8), np.float32)
    path = str(tmp_path / "odd.ckpt")
    write_adapter_file(tensors, path, metadata={"source": "test", "pet_config": None})
    before = _lora(net)
    with pytest.raises(ValueError) as err:
        load_adapter(net, path)
    text = str(err.value)
    assert "missing keys" in text and "body.fc2.mindpet_delta_lora_a" in text and "body.fc2.mindpet_delta_lora_b" in text
    assert "unexpected keys" in text and "body.fc9.mindpet_delta_lora_a" in text
    for name, value in _lora(net).items():  # nothing assigned
        np.testing.assert_array_equal(value, before[name])
    load_adapter(net, path, strict=False)  # loads what fits
    np.testing.assert_array_equal(_lora(net)["body.fc1.mindpet_delta_lora_a"], tensors["body.fc1.mindpet_delta_lora_a"])


def test_other_rank_is_named(tmp_path):
    path = str(tmp_path / "r8.safetensors")
    save_adapter(small_net(rank=8, alpha=16), path)
    net = small_net(rank=4, alpha=8)
    before = _lora(net)
    with pytest.raises(ValueError, match=r"body.fc1.mindpet_delta_lora_a: adapter \[8, 8\] vs network \[4, 8\] "
                                         r"\(adapter rank 8, network rank 4\)"):
        load_adapter(net, path)
    for name, value in _lora(net).items():
        np.testing.assert_array_equal(value, before[name])


def test_other_base_and_other_scaling(tmp_path):
    path = str(tmp_path / "a.ckpt")
    save_adapter(small_net(rank=4, alpha=8), path)
    other = small_net(rank=4, alpha=8)
    meta = read_adapter(path)[1]
    meta["base_fingerprint"] = base_fingerprint({"x.weight": (3, 3)})
    write_adapter_file(read_adapter(path)[0], str(tmp_path / "b.ckpt"), metadata=meta)
    with pytest.raises(ValueError, match="another base model"):
        load_adapter(other, str(tmp_path / "b.ckpt"))
    load_adapter(other, str(tmp_path / "b.ckpt"), strict=False)
    with pytest.raises(ValueError, match="scaling 2 but body.fc1 computes with 4"):
        load_adapter(small_net(rank=4, alpha=16), path)
    # the metadata rebuilds the config the adapter was trained with
    cfg = pet_config_from_metadata(read_adapter(path)[1])
    assert (cfg.lora_rank, cfg.lora_alpha, cfg.scaling) == (4, 8, 2.0)


def test_merged_cell_refused(tmp_path):
    net = small_net()
    path = str(tmp_path / "a.ckpt")
    save_adapter(net, path)
    net.body.fc1.merge()
    with pytest.raises(ValueError, match="body.fc1 is merged"):
        load_adapter(net, path)


def test_mindformers_and_mcore_names(tmp_path):
    net = small_net(seed=3)
    lora = _lora(net)
    # a MindFormers training checkpoint: a `network.` prefix, base weights, optimizer states, counters
    full = {f"network.{k}": v for k, v in numpy_params(net).items()}
    full.update({f"adam_m.network.{k}": np.ones_like(v) for k, v in lora.items()})
    full["epoch_num"] = np.array(3, np.int64)
    mf = str(tmp_path / "mf.ckpt")
    _files.write_checkpoint(full, mf)
    target = randomize_copy(small_net(seed=3))
    assert load_adapter(target, mf) == {}
    for name, value in lora.items():
        np.testing.assert_array_equal(_lora(target)[name], value)
    # mcore / PEFT style names
    mc = {k.replace("mindpet_delta_lora_a", "lora_A.weight").replace("mindpet_delta_lora_b", "lora_B.weight"): v
          for k, v in lora.items()}
    mc_path = str(tmp_path / "mcore.safetensors")
    _files.write_checkpoint(mc, mc_path)
    target = randomize_copy(small_net(seed=3))
    load_adapter(target, mc_path)
    for name, value in lora.items():
        np.testing.assert_array_equal(_lora(target)[name], value)


def randomize_copy(net):
    from tests.adapters.conftest import randomize
    return randomize(net, seed=99)


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_bad_inputs_leave_output_untouched(tmp_path, suffix):
    net = small_net()
    good = str(tmp_path / f"good{suffix}")
    save_adapter(net, good)
    out = str(tmp_path / f"out{suffix}")
    with open(out, "wb") as f:
        f.write(b"previous content")
    # truncated / corrupt inputs: clear errors
    raw = _snapshot(good)
    for i, cut in enumerate((len(raw) // 2, 5)):
        bad = str(tmp_path / f"cut{i}{suffix}")
        with open(bad, "wb") as f:
            f.write(raw[:cut])
        with pytest.raises(ValueError, match="truncated or corrupt"):
            read_adapter(bad)
        with pytest.raises(ValueError, match="truncated or corrupt"):
            gather_sharded_adapter([bad], out, overwrite=True)
    empty = str(tmp_path / f"empty{suffix}")
    open(empty, "wb").close()
    with pytest.raises(ValueError, match="empty"):
        load_adapter(net, empty)
    # a directory as output or input
    with pytest.raises(IsADirectoryError):
        save_adapter(net, str(tmp_path))
    with pytest.raises(IsADirectoryError):
        read_adapter(str(tmp_path))
    # wrong format flag, unknown suffix
    other = "safetensors" if suffix == ".ckpt" else "ckpt"
    with pytest.raises(ValueError, match=f"format='{other}' does not match the suffix"):
        save_adapter(net, out, format=other, overwrite=True)
    with pytest.raises(ValueError, match="must end with"):
        save_adapter(net, str(tmp_path / "out.bin"))
    # an empty adapter: a network without LoRA and nothing trainable
    frozen = small_net()
    for _, p in frozen.parameters_and_names():
        p.requires_grad = False
    frozen_plain = ms.nn.Dense(3, 3)
    frozen_plain.weight.requires_grad = frozen_plain.bias.requires_grad = False
    with pytest.raises(ValueError, match="empty adapter"):
        save_adapter(frozen_plain, out, overwrite=True)
    # a failing write (an unserialisable metadata value) leaves no temp file and the old output
    with pytest.raises(TypeError):
        write_adapter_file(_lora(net), out, metadata={"bad": object()})
    assert _snapshot(out) == b"previous content"
    assert sorted(os.listdir(tmp_path)) == sorted(
        [f"good{suffix}", f"out{suffix}", f"cut0{suffix}", f"cut1{suffix}", f"empty{suffix}"])


def test_format_named_wrong(tmp_path):
    path = str(tmp_path / "a.safetensors")
    save_adapter(small_net(), path)
    os.rename(path, tmp_path / "a.ckpt")
    with pytest.raises(ValueError, match="named .ckpt but holds a safetensors file"):
        read_adapter(str(tmp_path / "a.ckpt"))


def test_bf16_adapter_round_trip(tmp_path):
    from mindpet_lite.delta.lora import LoRADense
    from tests.adapters.conftest import randomize
    net = randomize(LoRADense(8, 6, 4, 8, param_init_type=ms.bfloat16, compute_dtype=ms.float32))
    for suffix in (".ckpt", ".safetensors"):
        path = str(tmp_path / f"bf{suffix}")
        save_adapter(net, path)
        tensors, _ = read_adapter(path)
        assert str(tensors["mindpet_delta_lora_a"].dtype) == "bfloat16"
        np.testing.assert_array_equal(tensors["mindpet_delta_lora_b"].astype(np.float32),
                                      net.mindpet_delta_lora_b.asnumpy().astype(np.float32))
        fresh = LoRADense(8, 6, 4, 8, param_init_type=ms.bfloat16, compute_dtype=ms.float32)
        fresh.weight.set_data(net.weight.data)
        fresh.bias.set_data(net.bias.data)
        load_adapter(fresh, path)
        assert fresh.mindpet_delta_lora_b.dtype == ms.bfloat16
        np.testing.assert_array_equal(fresh.mindpet_delta_lora_b.asnumpy().astype(np.float32),
                                      tensors["mindpet_delta_lora_b"].astype(np.float32))


def test_gather_sharded(tmp_path):
    net = small_net()
    for rank in range(3):
        os.makedirs(tmp_path / "ckpt" / f"rank_{rank}")
        save_adapter(net, str(tmp_path / "ckpt" / f"rank_{rank}" / f"lora_rank_{rank}-1_4.ckpt"))
    out = str(tmp_path / "gathered.safetensors")
    meta = gather_sharded_adapter(str(tmp_path / "ckpt"), out)
    assert meta["pet_config"]["lora_rank"] == 4
    tensors, meta2 = read_adapter(out)
    assert meta2 == meta and sorted(tensors) == LORA_NAMES
    # a rank that disagrees: not replicated
    other = small_net(seed=5)
    save_adapter(other, str(tmp_path / "ckpt" / "rank_2" / "lora_rank_2-2_4.ckpt"))
    os.utime(tmp_path / "ckpt" / "rank_2" / "lora_rank_2-2_4.ckpt", (2e9, 2e9))  # the newest file of rank 2
    out2 = str(tmp_path / "g2.ckpt")
    with pytest.raises(ValueError, match="differs between .*rank_2.* not replicas"):
        gather_sharded_adapter(str(tmp_path / "ckpt"), out2)
    assert not os.path.exists(out2)
    # model-parallel shards: shapes differ across ranks
    half = {k: v[: v.shape[0] // 2] for k, v in _lora(net).items()}
    write_adapter_file(half, str(tmp_path / "shard1.ckpt"), metadata={"source": "x"})
    with pytest.raises(ValueError, match="sharded \\(model parallel\\)"):
        gather_sharded_adapter([str(tmp_path / "ckpt" / "rank_0" / "lora_rank_0-1_4.ckpt"),
                                str(tmp_path / "shard1.ckpt")], out2)
    with pytest.raises(FileNotFoundError, match="no rank_<N>"):
        gather_sharded_adapter(str(tmp_path), out2)


def test_llama_save_load_logits(tmp_path):
    net = tiny_llama(seed=0)
    from tests.adapters.conftest import randomize
    randomize(net, seed=1, scale=0.05, names=("mindpet_delta_lora_b",))
    path = str(tmp_path / "llama.safetensors")
    meta = save_adapter(net, path)
    assert meta["pet_config"]["target_modules"] == ".*wq|.*wk|.*wv|.*wo|.*w1|.*w2|.*w3"
    tensors, _ = read_adapter(path)
    assert len(tensors) == 2 * 7 * 2
    fresh = tiny_llama(seed=0)  # same base, fresh LoRA (B = 0)
    ids = Tensor(np.random.default_rng(0).integers(0, 128, (2, 8)).astype(np.int32))
    want = net(ids).asnumpy()
    assert np.abs(fresh(ids).asnumpy() - want).max() > 1e-3
    load_adapter(fresh, path)
    np.testing.assert_allclose(fresh(ids).asnumpy(), want, atol=1e-5)
    with pytest.raises(ValueError, match="another base model"):
        load_adapter(tiny_llama(seed=0, vocab_size=96), path)


def test_metadata_is_plain_json(tmp_path):
    path = str(tmp_path / "a.safetensors")
    save_adapter(small_net(), path)
    from safetensors import safe_open
    with safe_open(path, "np") as f:
        json.loads(f.metadata()["mindpet_lite"])


def test_config_from_mindformers_model_config(tmp_path):
    """A MindFormers model carries its pet_config in `config.pet_config` (with keys of its own)."""
    import types
    net = small_net()
    net.config = types.SimpleNamespace(pet_config={"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8,
                                                   "lora_dropout": 0.0, "target_modules": ".*fc1|.*fc2",
                                                   "type": "LoraConfig"})
    meta = save_adapter(net, str(tmp_path / "a.ckpt"))
    assert meta["pet_config"]["target_modules"] == ".*fc1|.*fc2" and meta["scaling"] == 2.0
    del net.config
    meta = save_adapter(net, str(tmp_path / "b.ckpt"))  # nothing to read: described from the cells
    assert meta["pet_config"]["target_modules"] == ".*fc1|.*fc2" and meta["pet_config"]["lora_rank"] == 4
