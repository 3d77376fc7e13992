"""The run YAML's tables drive the flags and the defaults: every flag is in --help and sets its YAML
key; a default is stated once (the table), and the parsed config and the config classes agree on it."""
import argparse
import dataclasses

import pytest
import yaml

from mindpet_lite.train import run_schema as schema
from mindpet_lite.train.run_config import (DatasetConfig, LrScheduleConfig, OptimizerConfig, RunConfig,
                                           WrapperConfig, add_run_arguments, load_run_config)
from tests.train.tiny import MODEL, TINY_YAML

# flag -> (the YAML key it overrides, a value on the command line, where it lands, the value expected)
FLAG_CASES = {
    "run_mode": ("run_mode", "train", lambda c: c.run_mode, "train"),
    "load_checkpoint": ("load_checkpoint", "b.ckpt", lambda c: c.load_checkpoint, "b.ckpt"),
    "output_dir": ("output_dir", "out", lambda c: c.output_dir, "out"),
    "use_parallel": ("use_parallel", "True", lambda c: c.use_parallel, True),
    "auto_trans_ckpt": ("auto_trans_ckpt", "true", lambda c: c.auto_trans_ckpt, True),
    "resume_training": ("resume_training", "some/dir", lambda c: c.resume, "some/dir"),
    "seed": ("seed", "9", lambda c: c.seed, 9),
    "train_dataset_dir": ("train_dataset.data_loader.dataset_dir", "t.mindrecord",
                          lambda c: c.train_dataset.dataset_dir, "t.mindrecord"),
    "eval_dataset_dir": ("eval_dataset.data_loader.dataset_dir", "e.mindrecord",
                         lambda c: c.eval_dataset.dataset_dir, "e.mindrecord"),
    "mode": ("context.mode", "1", lambda c: c.mode, 1),
    "device_target": ("context.device_target", "GPU", lambda c: c.device_target, "GPU"),
    "device_id": ("context.device_id", "3", lambda c: c.device_id, 3),
    "epochs": ("runner_config.epochs", "2", lambda c: c.epochs, 2),
    "batch_size": ("runner_config.batch_size", "2", lambda c: c.batch_size, 2),
    "sink_mode": ("runner_config.sink_mode", "True", lambda c: c.sink_mode, True),
    "gradient_accumulation_steps": ("runner_config.gradient_accumulation_steps", "2",
                                    lambda c: c.gradient_accumulation_steps, 2),
    "max_steps": ("runner_config.max_steps", "3", lambda c: c.max_steps, 3),
    "predict_data": ("input_data", "hello", lambda c: c.input_data, "hello"),
    "predict_batch_size": ("predict_batch_size", "4", lambda c: c.predict_batch_size, 4),
    "adapter": ("adapter", "a.ckpt", lambda c: c.adapter, "a.ckpt"),
}


def _at(where, cfg):
    try:
        return where(cfg)
    except AttributeError:  # eval_dataset None
        return None


def _parser():
    return add_run_arguments(argparse.ArgumentParser(prog="run"))


def test_the_table_has_the_flags_of_run_mindformer():
    assert {key.flag: path for key, path in schema.flag_keys()} == {f: case[0] for f, case in FLAG_CASES.items()}


def test_every_flag_is_in_help_with_its_yaml_key():
    text = " ".join(_parser().format_help().split())  # undo argparse's line wrapping
    for flag, (path, *_) in FLAG_CASES.items():
        assert f"--{flag}" in text
        assert f"YAML {path};" in text
    assert "--resume" in text and "--config" in text and "--options" in text


@pytest.mark.parametrize("flag", sorted(FLAG_CASES))
def test_every_flag_overrides_its_yaml_key(flag):
    path, value, where, want = FLAG_CASES[flag]
    args, extra = _parser().parse_known_args(["--config", TINY_YAML, f"--{flag}", value])
    cfg = load_run_config(args, extra)
    assert where(cfg) == want
    assert _at(where, RunConfig.from_yaml(TINY_YAML)) != want  # the YAML alone says otherwise
    # the same value written as the YAML key lands in the same place
    assert where(RunConfig.from_yaml(TINY_YAML, {path: yaml.safe_load(value)})) == want


def test_resume_flag_alone_and_its_alias():
    for argv in (["--resume"], ["--resume_training"], ["--resume", "False"]):
        args, extra = _parser().parse_known_args(["--config", TINY_YAML, *argv])
        assert load_run_config(args, extra).resume is (argv[-1] != "False")


def test_bad_flag_values_are_refused_by_argparse():
    for argv in (["--use_parallel", "yes"], ["--device_target", "cpu"], ["--epochs", "two"], ["--mode", "2"]):
        with pytest.raises(SystemExit) as info:
            _parser().parse_args(["--config", TINY_YAML, *argv])
        assert info.value.code == 2


# ---- defaults: stated once ---------------------------------------------------------------------------
MINIMAL = {"lr_schedule": {"learning_rate": 1.0e-3},
           "model": {"model_config": dict(MODEL, pet_config={"target_modules": ".*wq"})}}

# the defaults as MindFormers and the previous hand-written dataclasses have them
EXPECTED = {"seed": 0, "output_dir": "./output", "load_checkpoint": "", "auto_trans_ckpt": False, "resume": False,
            "run_mode": "finetune", "input_data": None, "predict_batch_size": 1, "adapters": (), "epochs": 1, "batch_size": 1, "sink_mode": False, "sink_size": 1,
            "gradient_accumulation_steps": 1, "max_steps": None, "use_parallel": False, "parallel_mode": 0,
            "data_parallel": 1, "mode": 0, "device_target": "CPU", "device_id": None, "max_device_memory": None,
            "max_call_depth": None, "recompute": False, "do_eval": False, "eval_step_interval": 100,
            "eval_epoch_interval": 50, "arch_type": "LlamaForCausalLM", "log_every": 1,
            "save_checkpoint_steps": None, "keep_checkpoint_max": 3, "checkpoint_prefix": "lora",
            "checkpoint_dir": None, "checkpoint_format": "ckpt", "eval_dataset": None, "backend": "builtin"}
EXPECTED_SECTIONS = {
    "optimizer": {"type": "AdamWeightDecay", "beta1": 0.9, "beta2": 0.999, "eps": 1e-8, "weight_decay": 0.0,
                  "yaml_type": "AdamWeightDecay"},
    "lr_schedule": {"type": "cosine", "learning_rate": 1e-3, "warmup_ratio": 0.0, "warmup_steps": None,
                    "warmup_lr_init": 0.0, "lr_end": 0.0, "total_steps": None, "yaml_type": "CosineWithWarmUpLR"},
    "train_dataset": {"dataset_dir": "", "shuffle": True, "input_columns": ("input_ids", "labels"),
                      "batch_size": None, "drop_remainder": True, "num_parallel_workers": 1},
    "wrapper": {"type": "MFTrainOneStepCell", "scale_sense": 1.0, "dynamic_loss_scale": False, "scale_factor": 2.0,
                "scale_window": 1000, "use_clip_grad": False, "max_grad_norm": 1.0},
}


def test_a_minimal_yaml_gives_the_known_defaults():
    cfg = RunConfig.from_dict(MINIMAL)
    assert {name: getattr(cfg, name) for name in EXPECTED} == EXPECTED
    for name, want in EXPECTED_SECTIONS.items():
        assert dataclasses.asdict(getattr(cfg, name)) == want, name
    assert cfg.ignored_keys == []


def test_the_parsed_defaults_are_the_tables_defaults():
    cfg = RunConfig.from_dict(MINIMAL)
    for section in schema.RUN_CONFIG_SECTIONS:
        for key in section.keys:
            if key.field:
                assert getattr(cfg, key.target) == key.used_value(key.default), key.name
    for obj, sections in ((cfg.optimizer, [schema.OPTIMIZER]), (cfg.train_dataset, [schema.TRAIN_LOADER,
                                                                                    schema.TRAIN_DATASET]),
                          (cfg.wrapper, [schema.WRAPPER]), (cfg.lr_schedule, [schema.LR_SCHEDULE])):
        for section in sections:
            for key in section.keys:
                if key.field and key.target != "learning_rate":
                    assert getattr(obj, key.target) == key.used_value(key.default), (section.path, key.name)


def test_the_config_classes_have_the_same_defaults():
    """The dataclasses get their defaults from the tables: built empty, they equal the parsed defaults."""
    cfg = RunConfig.from_dict(MINIMAL)
    assert OptimizerConfig() == cfg.optimizer
    assert DatasetConfig() == cfg.train_dataset
    assert WrapperConfig() == cfg.wrapper
    assert dataclasses.replace(LrScheduleConfig(), learning_rate=1e-3) == cfg.lr_schedule
    empty = RunConfig()
    assert {name: getattr(empty, name) for name in EXPECTED} == EXPECTED


def test_eval_dataset_defaults_differ_from_train():
    cfg = RunConfig.from_dict(dict(MINIMAL, eval_dataset={"data_loader": {"dataset_dir": "e.mindrecord"}}))
    assert cfg.eval_dataset.shuffle is False and cfg.eval_dataset.drop_remainder is False


def test_null_means_the_default():
    data = dict(MINIMAL, seed=None, runner_config={"epochs": None, "max_steps": None,
                                                   "gradient_accumulation_steps": None},
                context={"device_target": None}, output_dir=None)
    cfg = RunConfig.from_dict(data)
    assert (cfg.seed, cfg.epochs, cfg.max_steps, cfg.gradient_accumulation_steps) == (0, 1, None, 1)
    assert cfg.device_target == "CPU" and cfg.output_dir == "./output"
    for section, key, value in (("runner_config", "max_steps", 0), ("runner_config", "gradient_accumulation_steps", 0),
                                ("", "output_dir", "")):  # not "unset": refused, naming the key
        bad = dict(MINIMAL, **({key: value} if not section else {section: {key: value}}))
        with pytest.raises(ValueError, match=key):
            RunConfig.from_dict(bad)
