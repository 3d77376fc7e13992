"""The runner with the variant pet_config keys in its YAML: per-layer ranks, one decoder layer, lm_head
trained in full, LoRA+; the adapter holds what the keys say, and a resumed run (LoRA+ optimizer groups
restored) equals an uninterrupted one."""
import os

import numpy as np
import yaml

from mindpet_lite._files import read_checkpoint
from mindpet_lite.adapters.metadata import read_adapter_file
from mindpet_lite.run import main
from tests.train import tiny

VARIANTS = {"rank_pattern": {"wq": 2}, "alpha_pattern": {"wv": 4}, "layers_to_transform": [1],
            "modules_to_save": ["lm_head"], "loraplus_lr_ratio": 8.0}


def variant_yaml(folder):
    with open(tiny.TINY_YAML, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    data["model"]["model_config"]["pet_config"].update(VARIANTS)
    path = os.path.join(folder, "variants.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f)
    return path


def run(yaml_path, base, train, out, *extra):
    flags = tiny.flags(base, train, out, *extra)
    flags[flags.index("--config") + 1] = yaml_path
    return main(flags)


def test_variant_keys_through_the_runner_and_resume(tiny_assets, tmp_path, capsys):
    base, train, _ = tiny_assets
    config = variant_yaml(str(tmp_path))
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    assert run(config, base, train, full, "--max_steps", "4") == 0
    tensors, meta = read_adapter_file(os.path.join(full, "adapter.ckpt"))
    assert sorted(tensors) == ["lm_head.weight"] + sorted(
        f"model.layers.1.attention.{m}.mindpet_delta_lora_{x}" for m in ("wq", "wv") for x in "ab")
    assert tensors["model.layers.1.attention.wq.mindpet_delta_lora_a"].shape == (2, 32)
    assert tensors["model.layers.1.attention.wv.mindpet_delta_lora_a"].shape == (4, 32)
    base_head = read_checkpoint(base)[0]["lm_head.weight"]
    assert float(np.abs(tensors["lm_head.weight"] - base_head).max()) > 0  # trained in full
    pet = meta["pet_config"]
    assert pet["rank_pattern"] == [["wq", 2]] and pet["layers_to_transform"] == [1]
    assert pet["modules_to_save"] == ["lm_head"] and pet["loraplus_lr_ratio"] == 8.0

    assert run(config, base, train, part, "--max_steps", "2") == 0
    assert run(config, base, train, part, "--max_steps", "4", "--resume") == 0
    assert "resumed from" in capsys.readouterr().out
    resumed, _ = read_adapter_file(os.path.join(part, "adapter.ckpt"))
    assert max(float(np.abs(tensors[k] - resumed[k]).max()) for k in tensors) <= 1e-5
