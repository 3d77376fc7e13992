"""The runner with pet_type adapter / low_rank_adapter in its YAML: it trains, the adapter file holds the
adapter parameters only (with their pet_config), a resumed run equals an uninterrupted one, and 2
data-parallel msrun workers equal one process."""
import os

import numpy as np
import pytest
import yaml

from mindpet_lite.adapters.metadata import read_adapter_file
from mindpet_lite.run import main
from tests import msrun_jobs
from tests.train import tiny

pytestmark = pytest.mark.xdist_group(msrun_jobs.MSRUN_GROUP)  # one worker for the msrun jobs (tests/conftest.py)

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


def _data_parallel_part(request, folder):
    """The shared msrun job's part: 2 workers x batch 2, 3 steps, pet_type adapter, on tiny_uneven."""
    base, train = request.getfixturevalue("tiny_uneven")
    flags = tiny.flags(base, train, os.path.join(folder, "dist"), "--max_steps", "3", "--batch_size", "2",
                       "--use_parallel", "True", "--parallel_config.data_parallel", "2")
    flags[flags.index("--config") + 1] = method_yaml(folder, "adapter")
    return flags


msrun_jobs.register("adapter_data_parallel", _data_parallel_part)


def test_adapter_data_parallel_equals_one_process(tiny_uneven, msrun_shared, tmp_path):
    """2 msrun workers x batch 2 (the shared msrun job's part adapter_data_parallel) end with the adapter
    of 1 process x batch 4 (run here, in this process: the runner is the same code; as LoRA's
    test_distributed)."""
    base, train = tiny_uneven
    single = str(tmp_path / "single")
    assert run(method_yaml(str(tmp_path), "adapter"), base, train, single, "--max_steps", "3", "--batch_size", "4") == 0
    dist = os.path.join(msrun_shared.check("adapter_data_parallel"), "dist")
    one, _ = read_adapter_file(os.path.join(single, "adapter.ckpt"))
    two, meta = read_adapter_file(os.path.join(dist, "adapter.ckpt"))
    assert meta["pet_config"]["pet_type"] == "adapter" and sorted(one) == sorted(two)
    assert max(float(np.abs(one[k] - two[k]).max()) for k in one) <= 1e-5
