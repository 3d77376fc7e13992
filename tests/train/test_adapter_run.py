"""The runner with pet_type adapter / low_rank_adapter in its YAML: it trains, the adapter file holds the
adapter parameters only (with their pet_config), a resumed run equals an uninterrupted one, and 2
data-parallel msrun workers equal one process."""
import os
import shlex

import numpy as np
import pytest
import yaml

from mindpet_lite.adapters.metadata import read_adapter_file
from mindpet_lite.run import main
from tests.train import tiny
from tests.train.test_distributed import _launch, _run_cmd

PET = {"adapter": {"pet_type": "adapter", "target_modules": ".*wo|.*w2", "bottleneck_size": 8},
       "low_rank_adapter": {"pet_type": "low_rank_adapter", "target_modules": ".*wo|.*w2", "reduction_factor": 4}}


def method_yaml(folder, pet_type):
    with open(tiny.TINY_YAML, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    data["model"]["model_config"]["pet_config"] = PET[pet_type]
    path = os.path.join(folder, f"{pet_type}.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f)
    return path


def run(yaml_path, base, train, out, *extra):
    flags = tiny.flags(base, train, out, *extra)
    flags[flags.index("--config") + 1] = yaml_path
    return main(flags)


@pytest.mark.parametrize("pet_type", list(PET))
def test_adapter_methods_train_save_and_resume(pet_type, tiny_assets, tmp_path, capsys):
    base, train, _ = tiny_assets
    config = method_yaml(str(tmp_path), pet_type)
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    assert run(config, base, train, full, "--max_steps", "4") == 0
    assert f"{pet_type}: 4 layers" in capsys.readouterr().out
    tensors, meta = read_adapter_file(os.path.join(full, "adapter.ckpt"))
    assert tensors and all(f"mindpet_delta_{pet_type}" in name for name in tensors)
    assert meta["pet_config"]["pet_type"] == pet_type
    up = [v for k, v in tensors.items() if "up_sampler" in k and ("weight_right" in k or k.endswith("up_sampler.weight"))]
    assert up and all(np.abs(v).max() > 0 for v in up)  # trained away from the zero start

    assert run(config, base, train, part, "--max_steps", "2") == 0
    assert run(config, base, train, part, "--max_steps", "4", "--resume") == 0
    assert "resumed from" in capsys.readouterr().out
    resumed, _ = read_adapter_file(os.path.join(part, "adapter.ckpt"))
    assert max(float(np.abs(tensors[k] - resumed[k]).max()) for k in tensors) <= 1e-5


def test_adapter_data_parallel_equals_one_process(tiny_uneven, tmp_path):
    """2 msrun workers x batch 2 end with the adapter of 1 process x batch 4 (as LoRA's test_distributed)."""
    base, train = tiny_uneven
    config = method_yaml(str(tmp_path), "adapter")
    single, dist = str(tmp_path / "single"), str(tmp_path / "dist")

    def cmd(out, *extra):
        return _run_cmd(base, train, out, *extra).replace(shlex.quote(tiny.TINY_YAML), shlex.quote(config))

    proc, _ = _launch(cmd(single, "--batch_size", "4"), 1, None, tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    proc, _ = _launch(cmd(dist, "--batch_size", "2", "--use_parallel", "True", "--parallel_config.data_parallel", "2"),
                      2, tmp_path / "logs", tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    one, _ = read_adapter_file(os.path.join(single, "adapter.ckpt"))
    two, meta = read_adapter_file(os.path.join(dist, "adapter.ckpt"))
    assert meta["pet_config"]["pet_type"] == "adapter" and sorted(one) == sorted(two)
    assert max(float(np.abs(one[k] - two[k]).max()) for k in one) <= 1e-5
