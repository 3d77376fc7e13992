"""The runner with ``pet_type: ptuning2`` in its YAML: only the prefix encoder trains and is saved (with its
metadata), the loss falls, a resumed run equals an uninterrupted one, and two data-parallel workers
(msrun) equal one process over the same global batch."""
import json
import os

import numpy as np
import pytest
import yaml

from mindpet_lite._files import read_checkpoint
from mindpet_lite.adapters.metadata import read_adapter_file
from mindpet_lite.run import main
from tests import msrun_jobs
from tests.train import tiny

pytestmark = pytest.mark.xdist_group(msrun_jobs.MSRUN_GROUP)  # one worker for the msrun jobs (tests/conftest.py)

PREFIX = {"pet_type": "ptuning2", "pre_seq_len": 4, "prefix_projection": True, "projection_dim": 16,
          "dropout_prob": 0.0}


def prefix_yaml(folder):
    with open(tiny.TINY_YAML, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    data["model"]["model_config"]["pet_config"] = dict(PREFIX)
    path = os.path.join(folder, "ptuning2.yaml")
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(data, f)
    return path


def run(yaml_path, base, train, out, *extra):
    flags = tiny.flags(base, train, out, *extra)
    flags[flags.index("--config") + 1] = yaml_path
    return main(flags)


def _losses(out):
    with open(os.path.join(out, "loss.csv"), encoding="utf-8") as f:
        rows = [line.strip().split(",") for line in f][1:]
    return [float(r[1]) for r in rows]


def test_ptuning2_through_the_runner_and_resume(tiny_assets, tmp_path, capsys):
    base, train, _ = tiny_assets
    config = prefix_yaml(str(tmp_path))
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    assert run(config, base, train, full, "--max_steps", "6") == 0
    assert "ptuning2: prefix of 4 slots" in capsys.readouterr().out
    tensors, meta = read_adapter_file(os.path.join(full, "adapter.ckpt"))
    mark = "model.prefix_encoder.mindpet_delta_ptuning2_"
    assert sorted(tensors) == sorted(mark + leaf for leaf in ("embedding.embedding_table", "dense_in.weight",
                                                               "dense_in.bias", "dense_out.weight", "dense_out.bias"))
    assert tensors[mark + "embedding.embedding_table"].shape == (4, 2 * 2 * 4 * 8)  # layers, k/v, heads, head_dim
    assert meta["pet_config"] == {**PREFIX, "freeze_include": None, "freeze_exclude": None}
    assert meta["prefix"] == {"pre_seq_len": 4, "num_layers": 2, "num_kv_heads": 4, "head_dim": 8,
                              "rope_theta": 10000.0, "prefix_projection": True}
    losses = _losses(full)
    assert len(losses) == 6 and np.mean(losses[-2:]) < np.mean(losses[:2])

    assert run(config, base, train, part, "--max_steps", "3") == 0
    assert run(config, base, train, part, "--max_steps", "6", "--resume") == 0
    assert "resumed from" in capsys.readouterr().out
    resumed, _ = read_adapter_file(os.path.join(part, "adapter.ckpt"))
    assert max(float(np.abs(tensors[k] - resumed[k]).max()) for k in tensors) <= 1e-5


def _two_workers_part(request, folder):
    """The shared msrun job's part: 2 workers x batch 2, 3 steps, ptuning2, on tiny_uneven."""
    base, train = request.getfixturevalue("tiny_uneven")
    flags = tiny.flags(base, train, os.path.join(folder, "dist"), "--max_steps", "3", "--batch_size", "2",
                       "--use_parallel", "True", "--parallel_config.data_parallel", "2")
    flags[flags.index("--config") + 1] = prefix_yaml(folder)
    return flags


msrun_jobs.register("ptuning2_data_parallel", _two_workers_part)


def test_ptuning2_two_workers_equal_one_process(tiny_uneven, msrun_shared, tmp_path):
    """The shared msrun job's part ptuning2_data_parallel against one process over batch 4 (run here)."""
    base, train = tiny_uneven
    single = str(tmp_path / "single")
    assert run(prefix_yaml(str(tmp_path)), base, train, single, "--max_steps", "3", "--batch_size", "4") == 0
    dist = os.path.join(msrun_shared.check("ptuning2_data_parallel"), "dist")
    ranks = []
    for r in (0, 1):
        with open(os.path.join(dist, "ranks", f"rank_{r}.json"), encoding="utf-8") as f:
            ranks.append(json.load(f))
    assert ranks[0]["adapter_sha256"] == ranks[1]["adapter_sha256"]  # the prefix is the same on both ranks
    one = read_checkpoint(os.path.join(single, "adapter.ckpt"))[0]
    two = read_checkpoint(os.path.join(dist, "adapter.ckpt"))[0]
    assert sorted(one) == sorted(two) and all("mindpet_delta_ptuning2" in k for k in one)
    assert max(float(np.abs(one[k] - two[k]).max()) for k in one) <= 1e-5
