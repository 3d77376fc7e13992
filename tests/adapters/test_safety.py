"""Trust at the edges of the adapter tools: an output never replaces an input, an existing output needs
--overwrite, NaN / Inf are refused, and a failed command leaves every input byte-identical."""
import hashlib
import json
import os

import numpy as np
import pytest
from mindspore import Tensor

from mindpet_lite import _files
from mindpet_lite.adapters import export_peft, import_peft, load_adapter, merge_weights, save_adapter
from mindpet_lite.adapters.metadata import write_adapter_file
from mindpet_lite.cli import main
from mindpet_lite.pet.config import LoraConfig
from tests.adapters.conftest import numpy_params, small_net, tiny_llama


def _digest(path):
    if os.path.isdir(path):
        return {n: _digest(os.path.join(path, n)) for n in sorted(os.listdir(path))}
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


@pytest.fixture
def llama_files(tmp_path):
    """(base .ckpt, adapter .ckpt) of the tiny Llama with attention-only LoRA (square weights)."""
    net = tiny_llama(targets=".*wq|.*wo", n_kv_heads=4)
    for name, p in net.parameters_and_names():
        if "mindpet_delta_lora_b" in name:
            p.set_data(Tensor(np.full(p.shape, 0.05, np.float32)))
    base = {n: v for n, v in numpy_params(net).items() if "mindpet_delta" not in n}
    base_path, adapter_path = str(tmp_path / "base.ckpt"), str(tmp_path / "adapter.ckpt")
    _files.write_checkpoint(base, base_path)
    save_adapter(net, adapter_path)
    return base_path, adapter_path


# ---- an output that is an input -------------------------------------------------------------------
@pytest.mark.parametrize("which", ["base", "adapter"])
def test_merge_refuses_to_write_over_an_input(llama_files, which, capsys):
    base, adapter = llama_files
    before = {p: _digest(p) for p in llama_files}
    out = base if which == "base" else adapter
    assert main(["merge", "--base", base, "--adapter", adapter, "--out", out, "--overwrite"]) == 2
    assert "never replaces an input" in capsys.readouterr().err
    assert {p: _digest(p) for p in llama_files} == before


def test_import_peft_refuses_an_output_inside_the_peft_folder(llama_files, tmp_path, capsys):
    peft_dir = str(tmp_path / "peft")
    export_peft(llama_files[1], peft_dir)
    before = _digest(peft_dir)
    for out in (os.path.join(peft_dir, "adapter_model.safetensors"), os.path.join(peft_dir, "x.ckpt")):
        assert main(["import-peft", "--peft-dir", peft_dir, "--out", out, "--overwrite"]) == 2
        assert "is inside the input" in capsys.readouterr().err
    assert _digest(peft_dir) == before


def test_convert_base_refuses_its_source_as_output(tmp_path, capsys):
    src = str(tmp_path / "model.safetensors")
    _files.write_checkpoint({"model.norm.weight": np.ones(4, np.float32)}, src)
    before = _digest(src)
    assert main(["convert-base", "--from", "hf", "--src", src, "--out", src, "--overwrite"]) == 2
    assert "never replaces an input" in capsys.readouterr().err
    assert _digest(src) == before


def test_data_refuses_its_source_as_destination_even_with_overwrite(tmp_path, capsys):
    src = str(tmp_path / "data.json")
    with open(src, "w", encoding="utf-8") as f:
        json.dump([{"instruction": "a", "output": "b"}], f)
    before = _digest(src)
    assert main(["data", "--src", src, "--dst", src, "--seq_length", "16", "--overwrite"]) == 2
    assert "never replaces an input" in capsys.readouterr().err
    assert _digest(src) == before


# ---- an existing output needs --overwrite -----------------------------------------------------------
def test_every_command_refuses_an_existing_output_without_overwrite(llama_files, tmp_path, capsys):
    base, adapter = llama_files
    merged, peft_dir, imported = str(tmp_path / "m.ckpt"), str(tmp_path / "p"), str(tmp_path / "i.ckpt")
    hf_src, hf_out = str(tmp_path / "model.safetensors"), str(tmp_path / "c.ckpt")
    _files.write_checkpoint({"model.norm.weight": np.ones(4, np.float32)}, hf_src)
    commands = [["merge", "--base", base, "--adapter", adapter, "--out", merged],
                ["export-peft", "--adapter", adapter, "--out", peft_dir],
                ["import-peft", "--peft-dir", peft_dir, "--out", imported],
                ["convert-base", "--from", "hf", "--src", hf_src, "--out", hf_out]]
    for argv in commands:
        assert main(argv) == 0, capsys.readouterr().err  # first time: written
    outputs = [merged, peft_dir, imported, hf_out]
    before = {p: _digest(p) for p in outputs}
    for argv in commands:
        assert main(argv) == 2
        assert "--overwrite" in capsys.readouterr().err
    assert {p: _digest(p) for p in outputs} == before
    for argv in commands:
        assert main(argv + ["--overwrite"]) == 0, capsys.readouterr().err


def test_save_adapter_needs_overwrite(tmp_path):
    path = str(tmp_path / "a.ckpt")
    save_adapter(small_net(), path)
    before = _digest(path)
    with pytest.raises(FileExistsError, match="overwrite=True"):
        save_adapter(small_net(seed=1), path)
    assert _digest(path) == before
    save_adapter(small_net(seed=1), path, overwrite=True)
    assert _digest(path) != before


# ---- NaN / Inf ------------------------------------------------------------------------------------
def _poison(net, value=np.nan):
    name, param = next((n, p) for n, p in net.parameters_and_names() if "mindpet_delta_lora_b" in n)
    array = param.asnumpy().copy()
    array.flat[0] = value
    param.set_data(Tensor(array))
    return name


@pytest.mark.parametrize("value", [np.nan, np.inf])
def test_non_finite_adapters_are_refused_on_save_load_merge_export(tmp_path, value):
    net = small_net()
    _poison(net, value)
    with pytest.raises(ValueError, match="NaN or Inf"):
        save_adapter(net, str(tmp_path / "a.ckpt"))
    assert not os.path.exists(tmp_path / "a.ckpt")

    good = small_net()
    tensors = {n: v for n, v in numpy_params(net).items() if "mindpet_delta" in n}
    bad_file = str(tmp_path / "bad.ckpt")
    write_adapter_file(tensors, bad_file, {"source": "mindpet_lite", "pet_config": LoraConfig(
        lora_rank=4, lora_alpha=8, target_modules=".*fc1|.*fc2").to_dict()})
    before = numpy_params(good)
    with pytest.raises(ValueError, match="NaN or Inf"):
        load_adapter(good, bad_file)
    after = numpy_params(good)
    assert all(np.array_equal(before[k], after[k]) for k in before)  # nothing assigned

    base = {"body.fc1.weight": np.zeros((6, 8), np.float32), "body.fc2.weight": np.zeros((4, 6), np.float32)}
    with pytest.raises(ValueError, match="NaN or Inf"):
        merge_weights(base, bad_file)
    with pytest.raises(ValueError, match="NaN or Inf"):
        export_peft(bad_file, str(tmp_path / "peft"))


def test_nan_alphas_are_refused(llama_files, tmp_path, capsys):
    base, adapter = llama_files
    with pytest.raises(ValueError, match="lora_alpha"):
        LoraConfig(lora_alpha=float("nan"), target_modules=".*wq")
    assert main(["merge", "--base", base, "--adapter", adapter, "--out", str(tmp_path / "m.ckpt"),
                 "--lora-alpha", "nan"]) == 2
    assert main(["merge", "--base", base, "--adapter", adapter, "--out", str(tmp_path / "m.ckpt"),
                 "--scaling", "inf"]) == 2
    assert main(["export-peft", "--adapter", adapter, "--out", str(tmp_path / "p"), "--lora-alpha", "nan"]) == 2
    capsys.readouterr()
    peft_dir = str(tmp_path / "peft")
    export_peft(adapter, peft_dir)
    config_path = os.path.join(peft_dir, "adapter_config.json")
    with open(config_path, encoding="utf-8") as f:
        config = json.load(f)
    config["lora_alpha"] = float("nan")
    with open(config_path, "w", encoding="utf-8") as f:
        json.dump(config, f)  # json writes the literal NaN, as Python's PEFT configs can hold
    with pytest.raises(ValueError, match="lora_alpha"):
        import_peft(peft_dir)
    assert not os.path.exists(tmp_path / "m.ckpt")


def test_export_refuses_an_alpha_that_contradicts_the_adapter(llama_files, tmp_path, capsys):
    adapter = llama_files[1]
    assert main(["export-peft", "--adapter", adapter, "--out", str(tmp_path / "p"), "--lora-alpha", "3"]) == 2
    assert "differs from the adapter's own lora_alpha=8" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "p" / "adapter_config.json")
    assert main(["export-peft", "--adapter", adapter, "--out", str(tmp_path / "p"), "--lora-alpha", "8"]) == 0


# ---- the README's merge example: square weights take the layout the adapter records ---------------------
def test_merge_of_square_weights_uses_the_recorded_layout(llama_files, tmp_path, capsys):
    base, adapter = llama_files
    out = str(tmp_path / "merged.ckpt")
    assert main(["merge", "--base", base, "--adapter", adapter, "--out", out]) == 0, capsys.readouterr().err
    merged, _ = _files.read_checkpoint(out)
    tensors, _ = _files.read_checkpoint(adapter)
    weights, _ = _files.read_checkpoint(base)
    name = "model.layers.0.attention.wq"
    a, b = tensors[f"{name}.mindpet_delta_lora_a"], tensors[f"{name}.mindpet_delta_lora_b"]
    want = weights[f"{name}.weight"].astype(np.float64) + 2.0 * b.astype(np.float64) @ a.astype(np.float64)
    np.testing.assert_allclose(merged[f"{name}.weight"], want, atol=1e-5)  # [out, in], s = 8 / 4

    plain = str(tmp_path / "no_meta.ckpt")  # an adapter without metadata: the layout is not known
    _files.write_checkpoint(tensors, plain)
    assert main(["merge", "--base", base, "--adapter", plain, "--out", str(tmp_path / "x.ckpt"),
                 "--scaling", "2"]) == 2
    assert "--layout out_in" in capsys.readouterr().err


def test_convert_base_checks_the_model_config_against_the_weights(tmp_path, capsys):
    net = tiny_llama(lora=False)
    src = str(tmp_path / "ms.ckpt")
    _files.write_checkpoint(numpy_params(net), src)
    config = str(tmp_path / "model.yaml")
    with open(config, "w", encoding="utf-8") as f:
        f.write("hidden_size: 64\nnum_layers: 2\nnum_heads: 4\nn_kv_heads: 2\nvocab_size: 256\nseq_length: 16\n"
                "intermediate_size: 128\n")
    assert main(["convert-base", "--from", "mindspore", "--src", src, "--out", str(tmp_path / "hf"),
                 "--model-config", config]) == 2
    assert "model_config does not describe these weights" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "hf" / "model.safetensors")


def test_a_ckpt_renamed_safetensors_is_named_as_such(tmp_path):
    path = str(tmp_path / "a.ckpt")
    _files.write_checkpoint({"w": np.ones(3, np.float32)}, path)
    renamed = str(tmp_path / "a.safetensors")
    os.rename(path, renamed)
    with pytest.raises(ValueError, match="named .safetensors but does not start with a safetensors header"):
        _files.read_checkpoint(renamed)
