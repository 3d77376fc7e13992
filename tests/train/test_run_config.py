"""RunConfig: MindFormers run YAMLs as they are, typos, ignored keys, flag overrides."""
import argparse
import copy
import logging
import os
import re

import pytest
import yaml

from mindpet_lite.train.run_config import (RunConfig, add_run_arguments, load_run_config, overrides_from_args,
                                           parse_extra_overrides)
from tests.conftest import REPO
from tests.train.tiny import TINY_YAML

LLAMA2_7B = os.path.join(REPO, "configs", "llama2", "lora_llama2_7b.yaml")
TINY_CPU = os.path.join(REPO, "configs", "tiny_llama", "lora_cpu.yaml")


def _raw(path):
    with open(path, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _parse(argv):
    return add_run_arguments(argparse.ArgumentParser()).parse_known_args(argv)


def test_llama2_7b_yaml_is_accepted_as_is(caplog):
    cfg = RunConfig.from_yaml(LLAMA2_7B)
    assert cfg.device_target == "Ascend" and cfg.use_parallel and cfg.data_parallel == 8
    assert cfg.seq_length == 4096 and cfg.llama_config.hidden_size == 4096 and cfg.llama_config.num_layers == 32
    assert str(cfg.llama_config.compute_dtype) == "BFloat16"
    pet = cfg.pet_config
    assert (pet.lora_rank, pet.lora_alpha, pet.lora_dropout) == (16, 16, 0.05)
    assert pet.target_modules == ".*wq|.*wk|.*wv|.*wo"
    assert cfg.optimizer.type == "AdamWeightDecay" and cfg.optimizer.yaml_type == "FP32StateAdamWeightDecay"
    assert cfg.lr_schedule.type == "cosine" and cfg.lr_schedule.warmup_ratio == 0.03
    assert cfg.lr_schedule.total_steps is None  # -1: the whole run
    assert cfg.batch_size == 2 and cfg.epochs == 2 and cfg.wrapper.use_clip_grad
    assert cfg.arch_type == "LlamaForCausalLM"
    # keys the runner does not use are collected and logged once, in one line
    assert cfg.recompute  # recompute_config.recompute: True; its Ascend-side refinements are ignored
    for key in ("processor", "recompute_config.select_recompute", "trainer", "train_dataset.numa_enable",
                "model.model_config.use_flash_attention", "callbacks[2](ObsMonitor)"):
        assert key in cfg.ignored_keys
    with caplog.at_level(logging.INFO, logger="mindpet_lite.train.run_config"):
        cfg.log_ignored()
    lines = [r for r in caplog.records if "ignored" in r.getMessage()]
    assert len(lines) == 1 and "processor" in lines[0].getMessage()


def test_mindformers_variants_of_the_7b_yaml():
    """What MindFormers' own lora_llama2_7b.yaml differs in: no weight_decay, float16 rotary, an eval
    dataset with input_ids only, 64 micro batches, a different per-dataset batch size."""
    data = _raw(LLAMA2_7B)
    del data["optimizer"]["weight_decay"]
    data["model"]["model_config"]["rotary_dtype"] = "float16"
    data["eval_dataset"]["input_columns"] = ["input_ids"]
    data["parallel_config"]["micro_batch_num"] = 64
    data["train_dataset"]["batch_size"] = 4
    cfg = RunConfig.from_dict(data)
    assert cfg.optimizer.weight_decay == 0.0 and cfg.batch_size == 2  # runner_config.batch_size wins
    assert cfg.eval_dataset is None  # no dataset_dir: nothing to score


def test_backend_is_builtin_on_cpu():
    cfg = RunConfig.from_yaml(LLAMA2_7B, {"context.device_target": "CPU"})
    assert cfg.backend == "builtin"
    assert RunConfig.from_yaml(TINY_CPU).backend == "builtin"


def test_tiny_cpu_config():
    cfg = RunConfig.from_yaml(TINY_CPU)
    assert cfg.device_target == "CPU" and not cfg.use_parallel and cfg.mode == 0
    assert cfg.train_dataset.dataset_dir.endswith("task_train.mindrecord")
    assert cfg.eval_dataset is not None and cfg.eval_dataset.dataset_dir.endswith("task_eval.mindrecord")
    assert cfg.log_every == 50 and cfg.save_checkpoint_steps == 250 and cfg.keep_checkpoint_max == 2
    assert cfg.epochs == 24 and cfg.lr_schedule.learning_rate == 2e-3 and cfg.pet_config.lora_rank == 4


@pytest.mark.parametrize("path, key, hint", [
    (("optimizer",), "lerning_rate", "learning_rate"),
    (("runner_config",), "batch_sise", "batch_size"),
    (("lr_schedule",), "warmup_ration", "warmup_ratio"),
    (("train_dataset", "data_loader"), "dataset_dri", "dataset_dir"),
    (("model",), "model_confg", "model_config"),
    ((), "optimzer", "optimizer"),
    (("runner_wrapper",), "use_clip_grd", "use_clip_grad"),
    (("parallel_config",), "data_paralel", "data_parallel"),
])
def test_typo_is_an_error_with_a_suggestion(path, key, hint):
    data = _raw(TINY_YAML)
    node = data
    for part in path:
        node = node[part]
    node[key] = 1
    with pytest.raises(ValueError, match=f"unknown key '{key}'; did you mean '{hint}'"):
        RunConfig.from_dict(data)


def test_typos_in_model_config_pet_config_and_callbacks():
    data = _raw(TINY_YAML)
    data["model"]["model_config"]["hiden_size"] = 64
    with pytest.raises(ValueError, match="hidden_size"):
        RunConfig.from_dict(data)
    data = _raw(TINY_YAML)
    data["model"]["model_config"]["pet_config"]["lora_rnak"] = 4
    with pytest.raises(ValueError, match="lora_rank"):
        RunConfig.from_dict(data)
    data = _raw(TINY_YAML)
    data["callbacks"][0]["per_print_time"] = 3
    with pytest.raises(ValueError, match="per_print_times"):
        RunConfig.from_dict(data)
    data = _raw(TINY_YAML)
    data["callbacks"].append({"type": "CheckpointMonitr"})
    with pytest.raises(ValueError, match="CheckpointMonitor"):
        RunConfig.from_dict(data)


def test_unknown_keys_far_from_used_ones_are_listed_as_ignored():
    data = _raw(TINY_YAML)
    data["my_cluster_tag"] = "x"
    data["optimizer"]["foo_bar_baz"] = 1
    cfg = RunConfig.from_dict(data)
    assert "my_cluster_tag" in cfg.ignored_keys and "optimizer.foo_bar_baz" in cfg.ignored_keys


@pytest.mark.parametrize("path, value, match", [
    (("optimizer", "type"), "SGD", "optimizer.type must be one of"),
    (("lr_schedule", "type"), "polynomial", "lr_schedule.type must be one of"),
    (("runner_config", "epochs"), 0, "epochs must be an int >= 1"),
    (("optimizer", "beta1"), 1.5, "beta1"),
    (("run_mode",), "eval", "run_mode must be one of"),
    (("context", "device_target"), "cpu", "did you mean 'CPU'"),
    (("train_dataset", "data_loader", "type"), "JsonDataset", "MindDataset"),
    (("train_dataset", "input_columns"), ["input_ids"], "input_ids' and 'labels'"),
    (("model", "arch", "type"), "Qwen2ForCausalLM", "built-in model is LlamaForCausalLM"),
    (("lr_schedule", "learning_rate"), "fast", "learning_rate must be a number"),
])
def test_bad_values(path, value, match):
    data = _raw(TINY_YAML)
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    with pytest.raises((ValueError, TypeError), match=match):
        RunConfig.from_dict(data)


@pytest.mark.parametrize("key", ["model_parallel", "pipeline_stage"])
@pytest.mark.parametrize("device", ["CPU", "Ascend"])
def test_model_parallel_is_refused_under_parallel(key, device):
    """Refused while the config is read (before launch, in every process), with the reason: on CPU
    MindSpore's measured error; on Ascend that this runner does not set up semi-auto parallel."""
    data = _raw(LLAMA2_7B)
    data["parallel_config"][key] = 2
    data.setdefault("context", {})["device_target"] = device
    data["use_parallel"] = True
    with pytest.raises(ValueError, match=f"{key} must be 1") as err:
        RunConfig.from_dict(data)
    if device == "CPU":
        assert "Invalid communication backend: CPU for semi_auto_parallel" in str(err.value)
    else:
        assert "trains data parallel only" in str(err.value) and "run_mindformer.py" in str(err.value)


def test_missing_pet_config_is_an_error():
    data = _raw(TINY_YAML)
    del data["model"]["model_config"]["pet_config"]
    with pytest.raises(ValueError, match="pet_config is missing"):
        RunConfig.from_dict(data)


def test_flags_override_the_yaml():
    args, extra = _parse(["--config", TINY_YAML, "--load_checkpoint", "b.ckpt", "--train_dataset_dir", "t.mr",
                          "--output_dir", "o", "--use_parallel", "True", "--device_target", "CPU",
                          "--auto_trans_ckpt", "False", "--max_steps", "3", "--seed", "9", "--run_mode", "train",
                          "--resume", "--epochs", "2", "--batch_size", "2",
                          "--lr_schedule.learning_rate", "3e-4", "--runner_wrapper.use_clip_grad=False"])
    cfg = load_run_config(args, extra)
    assert (cfg.load_checkpoint, cfg.train_dataset.dataset_dir, cfg.output_dir) == ("b.ckpt", "t.mr", "o")
    assert cfg.use_parallel and cfg.max_steps == 3 and cfg.seed == 9 and cfg.run_mode == "train"
    assert cfg.resume is True and cfg.epochs == 2 and cfg.batch_size == 2
    assert cfg.lr_schedule.learning_rate == 3e-4 and not cfg.wrapper.use_clip_grad
    raw = _raw(TINY_YAML)
    assert raw["load_checkpoint"] == ""  # the file is not touched


def test_flag_values_are_validated_like_yaml_keys():
    args, extra = _parse(["--config", TINY_YAML, "--max_steps", "0"])
    with pytest.raises(ValueError, match="max_steps must be an int >= 1"):  # 0 is not "no limit": leave it out
        load_run_config(args, extra)
    assert load_run_config(*_parse(["--config", TINY_YAML])).max_steps is None
    args, extra = _parse(["--config", TINY_YAML, "--epochs", "-1"])
    with pytest.raises(ValueError, match="epochs"):
        load_run_config(args, extra)
    args, extra = _parse(["--config", TINY_YAML, "--resume", "some/dir"])
    assert load_run_config(args, extra).resume == "some/dir"
    assert overrides_from_args({"max_steps": None, "seed": 1}) == {"seed": 1}
    with pytest.raises(ValueError, match="pairs"):
        parse_extra_overrides(["--a.b"])
    with pytest.raises(ValueError, match="must start with --"):
        parse_extra_overrides(["a.b", "1"])


def test_missing_and_invalid_yaml(tmp_path):
    with pytest.raises(FileNotFoundError):
        RunConfig.from_yaml(str(tmp_path / "nope.yaml"))
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        RunConfig.from_yaml(str(bad))
    bad.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="mapping"):
        RunConfig.from_yaml(str(bad))


def test_dynamic_loss_scale_section():
    data = _raw(TINY_YAML)
    data["runner_wrapper"]["scale_sense"] = {"type": "DynamicLossScaleUpdateCell", "loss_scale_value": 1024,
                                             "scale_factor": 2, "scale_window": 50}
    cfg = RunConfig.from_dict(copy.deepcopy(data))
    assert cfg.wrapper.dynamic_loss_scale and cfg.wrapper.scale_sense == 1024.0 and cfg.wrapper.scale_window == 50


@pytest.mark.parametrize("value, want", [(True, True), ("False", False), (False, False)])
def test_recompute_flag(value, want):
    data = _raw(TINY_YAML)
    data["recompute_config"] = {"recompute": value, "mp_comm_recompute": True}
    cfg = RunConfig.from_dict(data)
    assert cfg.recompute is want and cfg.summary()["recompute"] is want


@pytest.mark.parametrize("value, error, words", [
    ([2, 2], ValueError, "recompute_config.recompute must be True or False here"),
    (3, TypeError, "recompute_config.recompute must be a bool, got 3"),
])
def test_recompute_bad_values(value, error, words):
    data = _raw(TINY_YAML)
    data["recompute_config"] = {"recompute": value}
    with pytest.raises(error, match=re.escape(words)):
        RunConfig.from_dict(data)
