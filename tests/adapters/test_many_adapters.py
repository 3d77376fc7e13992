"""Named adapters through files: load_adapter(adapter_name=) beside the first adapter, a mixed batch of
files against single-adapter networks that loaded them the ordinary way, save_adapter(adapter_name=)
back to the single-adapter format (loads into a single network, exports to PEFT unchanged), and the
refusals (a name used twice, another base, layers without LoRA cells, unknown names)."""
import json
import os

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

import mindpet_lite
from mindpet_lite.adapters import (export_peft, load_adapter, merge_adapter, merge_checkpoint, pet_config_from_metadata,
                                   read_adapter, save_adapter)
from mindpet_lite.adapters.metadata import write_adapter_file
from mindpet_lite.models.generation import generate
from mindpet_lite.pet import get_pet_model
from tests.adapters.conftest import randomize, tiny_llama
from tests.modes import pynative

ms.set_device("CPU")
PROMPTS = [[5, 9, 3, 17, 22, 8], [40, 2], [11, 12, 13, 14], [7, 7, 30]]
NEW = 4
FEW = ".*wq|.*wv"


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Three adapters of one base, saved the ordinary way: a (rank 4, all layers), b (rank 4, all
    layers, safetensors), c (rank 2, alpha 3, rsLoRA, wq / wv only); and the base weights."""
    ms.set_context(mode=ms.GRAPH_MODE)
    root = tmp_path_factory.mktemp("many")
    base = {n: p.asnumpy() for n, p in tiny_llama(lora=False).parameters_and_names()}
    out = {"base": base}
    for name, kw, suffix in [("a", dict(), "ckpt"), ("b", dict(), "safetensors"),
                             ("c", dict(rank=2, alpha=3, rslora=True, targets=FEW), "safetensors")]:
        net = _with_base(randomize(tiny_llama(**kw), seed=ord(name)), base)
        out[name] = str(root / f"{name}.{suffix}")
        save_adapter(net, out[name])
    return out


def _with_base(net, base):
    for name, p in net.parameters_and_names():
        if name in base:
            p.set_data(Tensor(base[name]))
    net.set_train(False)
    return net


_SINGLES = {}


def _single(files, name):
    """A network built from the adapter's own metadata, the adapter loaded the ordinary way (once per
    file: its compiled graphs are reused)."""
    key = files[name] if name is not None else None
    if key not in _SINGLES:
        _SINGLES[key] = _build_single(files, name)
    return _SINGLES[key]


def _build_single(files, name):
    if name is None:
        return _with_base(tiny_llama(lora=False), files["base"])
    net = tiny_llama(lora=False)
    get_pet_model(net, pet_config_from_metadata(read_adapter(files[name])[1]))
    load_adapter(net, files[name])
    return _with_base(net, files["base"])


def _multi(files, targets=None):
    net = _with_base(tiny_llama() if targets is None else tiny_llama(targets=targets), files["base"])
    load_adapter(net, files["a"])
    load_adapter(net, files["b"], adapter_name="b")
    load_adapter(net, files["c"], adapter_name="c")
    return net


@pytest.fixture(autouse=True)
def graph_mode():
    ms.set_context(mode=ms.GRAPH_MODE)


def test_mixed_batch_of_files_equals_single_adapter_networks(files):
    net = _multi(files)
    assert mindpet_lite.list_adapters(net) == ["default", "b", "c"]
    names = ["b", "c", "__base__", "default"]
    mixed, mixed_logits = generate(net, PROMPTS, NEW, adapter_names=names, use_past=True, output_logits=True)
    for row, name in enumerate(names):
        with pynative():  # the reference: no graph compiles for each single-adapter network
            seqs, logits = generate(_single(files, {"default": "a", "__base__": None}.get(name, name)), PROMPTS, NEW,
                                    use_past=True, output_logits=True)
        assert mixed[row] == seqs[row], name
        for step in range(NEW):
            np.testing.assert_allclose(mixed_logits[step][row], logits[step][row], atol=1e-5, rtol=0)


def test_named_adapters_are_frozen_and_not_part_of_the_first(files, tmp_path):
    net = _multi(files)
    names = [n for n, p in net.parameters_and_names() if "__c" in n]
    assert len(names) == 8 and all(n.endswith(("mindpet_delta_lora_a__c", "mindpet_delta_lora_b__c")) for n in names)
    assert not any(p.requires_grad for n, p in net.parameters_and_names() if "__" in n)
    save_adapter(net, str(tmp_path / "first.ckpt"))
    first, _ = read_adapter(str(tmp_path / "first.ckpt"))
    original, _ = read_adapter(files["a"])
    assert sorted(first) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(first[key], value)


def test_saved_from_multi_loads_into_single_and_exports_to_peft_unchanged(files, tmp_path):
    net = _multi(files)
    mindpet_lite.set_adapter(net, "b")  # which one is active does not matter to saving
    saved = str(tmp_path / "c_again.safetensors")
    meta = save_adapter(net, saved, adapter_name="c")
    tensors, _ = read_adapter(saved)
    original, original_meta = read_adapter(files["c"])
    assert sorted(tensors) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(tensors[key], value)
    config = meta["pet_config"]
    assert (config["lora_rank"], config["lora_alpha"], config["use_rslora"]) == (2, 3, True)
    assert meta["base_fingerprint"] == original_meta["base_fingerprint"]
    single = _single(dict(files, c=saved), "c")  # built from the saved metadata, loaded strictly
    with pynative():  # two single-adapter networks compared: no graph compiles for either
        assert generate(single, PROMPTS, NEW) == generate(_single(files, "c"), PROMPTS, NEW)
    dirs = {}
    for tag, path in (("original", files["c"]), ("saved", saved)):
        dirs[tag] = str(tmp_path / f"peft_{tag}")
        export_peft(path, dirs[tag])
    with open(os.path.join(dirs["original"], "adapter_config.json"), encoding="utf-8") as f:
        want = json.load(f)
    with open(os.path.join(dirs["saved"], "adapter_config.json"), encoding="utf-8") as f:
        got = json.load(f)
    assert {k: got[k] for k in ("r", "lora_alpha", "use_rslora", "target_modules")} == \
        {k: want[k] for k in ("r", "lora_alpha", "use_rslora", "target_modules")}
    peft_want, _ = read_adapter(dirs["original"])
    peft_got, _ = read_adapter(dirs["saved"])
    assert sorted(peft_got) == sorted(peft_want)
    for key, value in peft_want.items():
        np.testing.assert_array_equal(peft_got[key], value)


def test_switch_delete_and_the_public_api(files):
    net = _multi(files)
    with pynative():  # the references: no graph compiles for each single-adapter network
        fresh = {name: generate(_single(files, name), PROMPTS, NEW) for name in ("c", "a", None)}
    mindpet_lite.set_adapter(net, "c")
    assert generate(net, PROMPTS, NEW) == fresh["c"]
    mindpet_lite.delete_adapter(net, "c")
    assert mindpet_lite.list_adapters(net) == ["default", "b"]
    assert not any("__c" in n for n, _ in net.parameters_and_names())
    assert generate(net, PROMPTS, NEW) == fresh["a"]  # back to the first
    with mindpet_lite.disable_adapter(net):
        assert generate(net, PROMPTS, NEW) == fresh[None]


def test_refusals_name_the_problem_before_any_change(files, tmp_path):
    net = _multi(files)
    before = {n: p.asnumpy().copy() for n, p in net.parameters_and_names()}
    with pytest.raises(ValueError, match=r"adapter_name 'b' is already used .*\['default', 'b', 'c'\]"):
        load_adapter(net, files["a"], adapter_name="b")
    with pytest.raises(ValueError, match="adapter_name must be a letter"):
        load_adapter(net, files["a"], adapter_name="__base__")
    other = randomize(tiny_llama(hidden_size=32))
    other_path = str(tmp_path / "other.ckpt")
    save_adapter(other, other_path)
    with pytest.raises(ValueError, match="saved from another base model"):
        load_adapter(net, other_path, adapter_name="other")
    with pytest.raises(ValueError, match=r"unknown adapter 'zz'"):
        save_adapter(net, str(tmp_path / "zz.ckpt"), adapter_name="zz")
    assert not os.path.exists(str(tmp_path / "zz.ckpt"))
    with pytest.raises(ValueError, match=r"unknown adapter 'zz'"):
        mindpet_lite.set_adapter(net, "zz")
    with pytest.raises(ValueError, match="cannot be deleted"):
        mindpet_lite.delete_adapter(net, "default")
    assert mindpet_lite.list_adapters(net) == ["default", "b", "c"]
    after = {n: p.asnumpy() for n, p in net.parameters_and_names()}
    assert sorted(after) == sorted(before)
    for n, value in before.items():
        np.testing.assert_array_equal(after[n], value)
    # a key naming no dense layer of the network: refused, no LoRA cell added for the others either
    few = _with_base(tiny_llama(targets=FEW), files["base"])
    tensors, meta = read_adapter(files["b"])
    tensors["model.nowhere.mindpet_delta_lora_a"] = np.zeros((4, 64), np.float32)
    tensors["model.nowhere.mindpet_delta_lora_b"] = np.zeros((64, 4), np.float32)
    write_adapter_file(tensors, str(tmp_path / "nowhere.safetensors"), meta)
    cells_before = sorted(mindpet_lite.graph.freeze.lora_cells(few))
    with pytest.raises(ValueError, match=r"name no dense layer of the network .*model\.nowhere"):
        load_adapter(few, str(tmp_path / "nowhere.safetensors"), adapter_name="b")
    assert mindpet_lite.list_adapters(few) == ["default"]
    assert sorted(mindpet_lite.graph.freeze.lora_cells(few)) == cells_before


def test_a_rank_pattern_adapter_as_a_named_one(files, tmp_path):
    """Per-layer ranks and alphas (rank_pattern / alpha_pattern) load as a named adapter, mix, and save
    back to the same file content and config."""
    net = tiny_llama(lora=False)
    get_pet_model(net, dict(lora_rank=4, lora_alpha=8, lora_dropout=0.0, target_modules=FEW,
                            rank_pattern={"wv": 2}, alpha_pattern={"wv": 3}))
    path = str(tmp_path / "pattern.safetensors")
    save_adapter(_with_base(randomize(net, seed=5), files["base"]), path)
    multi = _multi(files)
    load_adapter(multi, path, adapter_name="pat")
    ranks = {n: tuple(p.shape) for n, p in multi.parameters_and_names() if n.endswith("lora_a__pat")}
    assert ranks["model.layers.0.attention.wv.mindpet_delta_lora_a__pat"][0] == 2
    assert ranks["model.layers.1.attention.wq.mindpet_delta_lora_a__pat"][0] == 4
    single = _single(dict(files, pat=path), "pat")
    names = ["pat", "b", "pat", "__base__"]
    mixed = generate(multi, PROMPTS, NEW, adapter_names=names, use_past=True)
    with pynative():  # the reference: no graph compiles for the single-adapter network
        alone = generate(single, PROMPTS, NEW, use_past=True)
    assert [mixed[i] for i in (0, 2)] == [alone[i] for i in (0, 2)]
    again = str(tmp_path / "pattern_again.safetensors")
    meta = save_adapter(multi, again, adapter_name="pat")
    original, original_meta = read_adapter(path)
    tensors, _ = read_adapter(again)
    assert sorted(tensors) == sorted(original)
    for key, value in original.items():
        np.testing.assert_array_equal(tensors[key], value)
    want, got = pet_config_from_metadata(original_meta), pet_config_from_metadata(meta)
    for layer in ("model.layers.0.attention.wv", "model.layers.1.attention.wq"):
        assert (got.rank_for(layer), got.scaling_for(layer)) == (want.rank_for(layer), want.scaling_for(layer))


def test_merge_a_named_adapter_into_a_copy_of_the_base(files):
    net = _multi(files)
    before = {n: p.asnumpy().copy() for n, p in net.parameters_and_names()}
    merged = merge_adapter(net, adapter_name="c")
    layer = "model.layers.1.attention.wv"
    c, _ = read_adapter(files["c"])
    a, b = c[f"{layer}.mindpet_delta_lora_a"].astype(np.float64), c[f"{layer}.mindpet_delta_lora_b"].astype(np.float64)
    want = files["base"][f"{layer}.weight"].astype(np.float64) + 3 / np.sqrt(2) * (b @ a)  # alpha 3, rank 2, rsLoRA
    np.testing.assert_allclose(merged[f"{layer}.weight"], want, atol=1e-6, rtol=0)
    np.testing.assert_array_equal(merged["model.layers.0.attention.wk.weight"],
                                  files["base"]["model.layers.0.attention.wk.weight"])  # not one of c's layers
    same = merge_checkpoint(files["base"], files["c"])
    assert sorted(merged) == sorted(same) and not any("mindpet_delta_lora" in k for k in merged)
    for key, value in same.items():
        np.testing.assert_array_equal(merged[key], value)
    for name, param in net.parameters_and_names():  # the network is untouched
        np.testing.assert_array_equal(param.asnumpy(), before[name])
    with pytest.raises(ValueError, match="adapter and scaling must be None"):
        merge_adapter(net, files["c"], adapter_name="c")
    with pytest.raises(ValueError, match="unknown adapter 'zz'"):
        merge_adapter(net, adapter_name="zz")
