"""Trainer: lr schedule values, a short real run, resume equality, accumulation, bad inputs."""
import csv
import json
import math
import os

import numpy as np
import pytest

from mindpet_lite.run import main
from mindpet_lite.train.run_config import LrScheduleConfig
from mindpet_lite.train.schedule import lr_values, warmup_steps_for
from tests import msrun_jobs
from tests.train import tiny
from tests.reference import lr_schedule

pytestmark = pytest.mark.xdist_group(msrun_jobs.MSRUN_GROUP)  # one worker for the msrun jobs (tests/conftest.py)


# ---- lr schedule against a numpy formula ---------------------------------------------------------
@pytest.mark.parametrize("kind, total, ratio, steps, lr_end, lr_init", [
    ("cosine", 100, 0.1, None, 0.0, 0.0),
    ("cosine", 37, 0.03, None, 1e-5, 0.0),
    ("cosine", 10, 0.0, 3, 1e-4, 1e-5),
    ("cosine", 5, 0.0, None, 0.0, 0.0),
    ("constant", 50, 0.2, None, 0.0, 0.0),
    ("constant", 8, 0.0, 4, 0.0, 1e-4),
])
def test_lr_schedule_matches_numpy(kind, total, ratio, steps, lr_end, lr_init):
    sched = LrScheduleConfig(type=kind, learning_rate=1e-3, warmup_ratio=ratio, warmup_steps=steps,
                             lr_end=lr_end, warmup_lr_init=lr_init)
    warmup = warmup_steps_for(sched, total)
    assert warmup == (steps if steps is not None else int(ratio * total))
    np.testing.assert_allclose(lr_values(sched, total), lr_schedule(kind, 1e-3, total, warmup, lr_end, lr_init),
                               rtol=1e-6, atol=1e-12)


def test_lr_schedule_shape():
    sched = LrScheduleConfig(type="cosine", learning_rate=1.0, warmup_steps=10, lr_end=0.1)
    lrs = lr_values(sched, 110)
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0) and lrs[10] == pytest.approx(1.0)
    assert np.all(np.diff(lrs[10:]) <= 1e-7) and lrs[-1] > 0.1 and lrs[-1] == pytest.approx(0.1, abs=1e-3)
    assert math.isclose(lrs[60], 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 50 / 100)), rel_tol=1e-6)


# ---- real runs ---------------------------------------------------------------------------------------
def _adapter(path):
    from mindpet_lite._files import read_checkpoint
    return read_checkpoint(path)[0]


def _max_diff(a, b):
    assert sorted(a) == sorted(b)
    return max(float(np.max(np.abs(a[k] - b[k]))) for k in a)


def _csv(path):
    with open(path, encoding="utf-8") as f:
        return list(csv.DictReader(f))


def test_short_run_writes_adapter_csv_png_checkpoints(tiny_assets, tmp_path, capsys):
    base, train, held_out = tiny_assets
    out = str(tmp_path / "run")
    assert main(tiny.flags(base, train, out, "--max_steps", "3", "--eval_dataset_dir", held_out,
                           "--do_eval", "True", "--eval_step_interval", "2")) == 0
    text = capsys.readouterr().out
    assert "step 3/8 | loss" in text and "tokens/s" in text and "ETA" in text
    assert "held-out before: loss" in text and "held-out after : loss" in text
    rows = _csv(os.path.join(out, "loss.csv"))
    assert [int(r["step"]) for r in rows] == [1, 2, 3]
    assert all(math.isfinite(float(r["loss"])) for r in rows)
    assert os.path.getsize(os.path.join(out, "loss.png")) > 1000
    adapter = _adapter(os.path.join(out, "adapter.ckpt"))
    assert adapter and all("mindpet_delta_lora" in k for k in adapter)
    assert any(np.abs(v).max() > 0 for k, v in adapter.items() if k.endswith("lora_b"))  # B trained
    ckpts = sorted(os.listdir(os.path.join(out, "checkpoint")))
    assert ckpts == ["tiny_step000002.ckpt", "tiny_step000002.json", "tiny_step000002.state.ckpt",
                     "tiny_step000003.ckpt", "tiny_step000003.json", "tiny_step000003.state.ckpt"]
    assert not [f for f in os.listdir(os.path.join(out, "checkpoint")) if "tmp" in f]
    with open(os.path.join(out, "summary.json"), encoding="utf-8") as f:
        summary = json.load(f)
    assert summary["steps"] == 3 and summary["total_steps"] == 8 and 0 < summary["trainable_percent"] < 100
    assert summary["eval_before"]["loss"] > 0 and summary["eval_after"]["rows"] == 8
    # do_eval: scored at step 2 too; the score is that of the step-2 adapter checkpoint, scored afresh
    assert "eval at step 2: loss" in text and [e["step"] for e in summary["evals"]] == [0, 2, 3]
    assert summary["evals"][1] == pytest.approx(_score_afresh(base, held_out, summary["config"]["pet_config"],
                                                              os.path.join(out, "checkpoint", "tiny_step000002.ckpt"),
                                                              step=2), rel=1e-5)


def _score_afresh(base, data, pet_config, adapter, step):
    """evaluate() of a new network: base weights + pet_config + the adapter file."""
    from mindpet_lite.adapters import load_adapter
    from mindpet_lite.data import create_dataset
    from mindpet_lite.models import LlamaConfig, LlamaForCausalLM
    from mindpet_lite.pet import get_pet_model
    from mindpet_lite.train import evaluate, load_base_checkpoint
    net = LlamaForCausalLM(LlamaConfig.from_dict(tiny.MODEL))
    load_base_checkpoint(net, base)
    get_pet_model(net, pet_config)
    load_adapter(net, adapter)
    metrics = evaluate(net, create_dataset(data, 4, seq_length=tiny.MODEL["seq_length"], shuffle=False,
                                           drop_remainder=False))
    return dict(metrics, step=step)


def test_resume_equals_uninterrupted_run(tiny_assets, tmp_path, capsys):
    base, train, _ = tiny_assets
    full, part = str(tmp_path / "full"), str(tmp_path / "part")
    assert main(tiny.flags(base, train, full, "--max_steps", "6")) == 0
    assert main(tiny.flags(base, train, part, "--max_steps", "3")) == 0
    assert main(tiny.flags(base, train, part, "--max_steps", "6", "--resume")) == 0
    assert "resumed from" in capsys.readouterr().out
    assert _max_diff(_adapter(os.path.join(full, "adapter.ckpt")), _adapter(os.path.join(part, "adapter.ckpt"))) <= 1e-5
    a, b = _csv(os.path.join(full, "loss.csv")), _csv(os.path.join(part, "loss.csv"))
    assert [r["step"] for r in b] == [str(s) for s in range(1, 7)]  # the curve continues
    np.testing.assert_allclose([float(r["loss"]) for r in a], [float(r["loss"]) for r in b], rtol=1e-4)
    np.testing.assert_allclose([float(r["lr"]) for r in a], [float(r["lr"]) for r in b], rtol=1e-6)


def test_gradient_accumulation_equals_the_larger_batch(tiny_uneven, tiny_uneven_batch4, tmp_path, capsys):
    """k=2 micro-batches of 2 == one batch of 4, on rows with 2 to 5 label tokens (the loss of a step is
    the mean over its global batch's tokens, not a mean of micro-batch means): same adapter, same logged
    loss; the progress line counts the accumulation in the global batch. The accumulating run also
    recomputes its decoder layers (recompute_config), which must not change it."""
    base, train = tiny_uneven
    one, acc = tiny_uneven_batch4, str(tmp_path / "acc")
    capsys.readouterr()
    assert main(tiny.flags(base, train, acc, "--max_steps", "3", "--batch_size", "2",
                           "--gradient_accumulation_steps", "2", "--recompute_config.recompute", "True")) == 0
    assert "global batch 4 x 15 tokens" in capsys.readouterr().out
    assert _max_diff(_adapter(os.path.join(one, "adapter.ckpt")), _adapter(os.path.join(acc, "adapter.ckpt"))) <= 1e-5
    losses = [[float(r["loss"]) for r in _csv(os.path.join(out, "loss.csv"))] for out in (one, acc)]
    np.testing.assert_allclose(losses[0], losses[1], rtol=1e-5)


@pytest.mark.parametrize("changes, words", [
    ({"do_eval": True}, "do_eval is True but eval_dataset.data_loader.dataset_dir is not set"),
    ({"do_eval": True, "eval_step_interval": -1, "eval_epoch_interval": 0,
      "eval_dataset": {"data_loader": {"dataset_dir": "x.mindrecord"}}}, "both <= 0"),
    ({"do_eval": "yes"}, "do_eval must be a bool, got 'yes'"),
])
def test_do_eval_settings_are_checked(changes, words):
    import yaml
    from mindpet_lite.train.run_config import RunConfig
    with open(tiny.TINY_YAML, encoding="utf-8") as f:
        data = yaml.safe_load(f)
    data.pop("eval_dataset", None)
    data.update(changes)
    with pytest.raises((ValueError, TypeError), match=words):
        RunConfig.from_dict(data)


def test_dynamic_loss_scale_runs(tiny_assets, tmp_path):
    base, train, _ = tiny_assets
    out = str(tmp_path / "scaled")
    assert main(tiny.flags(base, train, out, "--max_steps", "2",
                           "--runner_wrapper.scale_sense", "{type: DynamicLossScaleUpdateCell, "
                           "loss_scale_value: 1024, scale_factor: 2, scale_window: 1}")) == 0
    adapter = _adapter(os.path.join(out, "adapter.ckpt"))
    assert all(np.isfinite(v).all() for v in adapter.values())
    from mindpet_lite._files import read_checkpoint
    state = read_checkpoint(os.path.join(out, "checkpoint", "tiny_step000002.state.ckpt"))[0]
    assert float(state["scale_sense"]) == 4096.0  # doubled after each finite step (window 1)


# ---- bad inputs: a clear error before training --------------------------------------------------------
def _fails(argv, capsys, match, out):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert match in err, err
    assert not os.path.exists(os.path.join(out, "loss.csv")) and not os.path.exists(os.path.join(out, "checkpoint"))


def test_missing_dataset(tiny_assets, tmp_path, capsys):
    base, _, _ = tiny_assets
    out = str(tmp_path / "o")
    _fails(tiny.flags(base, str(tmp_path / "nope.mindrecord"), out), capsys, "dataset file not found", out)


def test_dataset_without_the_columns(tiny_assets, tmp_path, capsys):
    from mindspore.mindrecord import FileWriter
    base, _, _ = tiny_assets
    path = str(tmp_path / "text.mindrecord")
    writer = FileWriter(path, shard_num=1, overwrite=True)
    writer.add_schema({"input_ids": {"type": "int32", "shape": [16]},
                       "attention_mask": {"type": "int32", "shape": [16]}}, "no labels")
    writer.write_raw_data([{"input_ids": np.ones(16, np.int32), "attention_mask": np.ones(16, np.int32)}] * 8)
    writer.commit()
    out = str(tmp_path / "o")
    _fails(tiny.flags(base, path, out), capsys, "lacks column(s) ['labels']", out)


def test_checkpoint_of_another_model(tiny_assets, tmp_path, capsys):
    _, train, _ = tiny_assets
    other = tiny.make_base(str(tmp_path / "other.ckpt"), hidden_size=64)
    out = str(tmp_path / "o")
    _fails(tiny.flags(other, train, out), capsys, "checkpoint of another model", out)


def test_checkpoint_with_missing_layers(tiny_assets, tmp_path, capsys):
    import mindspore as ms
    base, train, _ = tiny_assets
    weights = ms.load_checkpoint(base)
    items = [{"name": k, "data": v} for k, v in weights.items() if "layers.1." not in k]
    partial = str(tmp_path / "partial.ckpt")
    ms.save_checkpoint(items, partial)
    out = str(tmp_path / "o")
    _fails(tiny.flags(partial, train, out), capsys, "would stay at random", out)
    _fails(tiny.flags("", train, out), capsys, "load_checkpoint is empty", out)


def test_config_typo(tiny_assets, tmp_path, capsys):
    base, train, _ = tiny_assets
    out = str(tmp_path / "o")
    _fails(tiny.flags(base, train, out, "--optimizer.weight_decy", "0.1"), capsys, "did you mean 'weight_decay'", out)


def test_more_workers_or_batch_than_data(tiny_assets, tmp_path, capsys):
    from mindpet_lite.train.run_config import RunConfig
    from mindpet_lite.train.job import _open_data
    base, train, _ = tiny_assets
    out = str(tmp_path / "o")
    _fails(tiny.flags(base, train, out, "--batch_size", "64"), capsys, "fewer than batch_size=64", out)
    cfg = RunConfig.from_yaml(tiny.TINY_YAML, {"train_dataset.data_loader.dataset_dir": train})
    with pytest.raises(ValueError, match="worker count larger than the data"):
        _open_data(cfg, cfg.train_dataset, 4, 0, 16, 1, train=True)


def test_resume_without_checkpoint_and_msrun_without_use_parallel(tiny_assets, tmp_path, capsys, monkeypatch):
    base, train, _ = tiny_assets
    out = str(tmp_path / "o")
    _fails(tiny.flags(base, train, out, "--resume"), capsys, "no checkpoint", out)
    monkeypatch.setenv("MS_WORKER_NUM", "2")
    monkeypatch.setenv("MS_ROLE", "MS_WORKER")
    monkeypatch.setenv("RANK_ID", "0")
    _fails(tiny.flags(base, train, out), capsys, "use_parallel is False", out)
    monkeypatch.delenv("MS_WORKER_NUM")
    monkeypatch.delenv("MS_ROLE")
    _fails(tiny.flags(base, train, out, "--use_parallel", "True", "--parallel_config.data_parallel", "2"),
           capsys, "data_parallel must equal the number of workers", out)


def test_load_base_checkpoint_from_rank_dirs(tiny_assets, tmp_path):
    import shutil
    from mindpet_lite.models.llama import LlamaForCausalLM, LlamaConfig
    from mindpet_lite.train import load_base_checkpoint
    base, _, _ = tiny_assets
    for rank in (0, 1):
        os.makedirs(tmp_path / "dist" / f"rank_{rank}")
        shutil.copy(base, tmp_path / "dist" / f"rank_{rank}" / "llama.ckpt")
    net = LlamaForCausalLM(LlamaConfig.from_dict(tiny.MODEL))
    info = load_base_checkpoint(net, str(tmp_path / "dist"), auto_trans_ckpt=True, rank_id=1)
    assert info["files"][0].endswith(os.path.join("rank_1", "llama.ckpt"))
    os.makedirs(tmp_path / "shard" / "rank_0")
    tiny.make_base(str(tmp_path / "shard" / "rank_0" / "llama.ckpt"), intermediate_size=32)
    with pytest.raises(ValueError, match="cannot reshard"):
        load_base_checkpoint(net, str(tmp_path / "shard"), auto_trans_ckpt=True)
