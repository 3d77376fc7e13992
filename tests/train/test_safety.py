"""Trust at the edges of the runner: unknown flags and keys are errors, NaN and nonsense values are
refused naming the key, and bad data, devices, outputs and resume states stop the run before the
model is built (exit status 2, one line on stderr)."""
import os

import numpy as np
import pytest
from mindspore.mindrecord import FileWriter

from mindpet_lite.cli import main as cli_main
from mindpet_lite.run import main as run_main
from mindpet_lite.train import RunConfig
from tests.train import tiny


def _fails(argv, capsys, *words):
    assert run_main(argv) == 2
    err = capsys.readouterr().err
    for word in words:
        assert word in err, err
    return err


@pytest.mark.parametrize("extra, words", [
    (["--max-steps", "3"], ["unknown flag --max-steps", "did you mean --max_steps"]),
    (["--num_epochs", "2"], ["unknown flag --num_epochs", "did you mean --epochs"]),
    (["--lr", "1e-3"], ["unknown flag --lr"]),
    (["--save_checkpoint_steps", "5"], ["callbacks list (CheckpointMonitor)"]),
    (["--runner_config.max_step", "3"], ["did you mean 'max_steps'"]),
    (["--runner_config.no_such_key", "3"], ["--runner_config.no_such_key is set on the command line"]),
    (["--no_such_section.key", "3"], ["--no_such_section.key is set on the command line"]),
])
def test_unknown_flags_and_keys_are_errors(tiny_assets, tmp_path, capsys, extra, words):
    base, data, _ = tiny_assets
    out = str(tmp_path / "out")
    _fails(tiny.flags(base, data, out, *extra), capsys, *words)
    assert not os.path.exists(os.path.join(out, "adapter.ckpt"))


@pytest.mark.parametrize("extra, words", [
    (["--max_steps", "0"], ["runner_config.max_steps must be an int >= 1"]),
    (["--gradient_accumulation_steps", "0"], ["runner_config.gradient_accumulation_steps must be an int >= 1"]),
    (["--lr_schedule.learning_rate", ".nan"], ["lr_schedule.learning_rate must be a finite number"]),
    (["--lr_schedule.lr_end", ".inf"], ["lr_schedule.lr_end must be a finite number"]),
    (["--optimizer.weight_decay", ".nan"], ["optimizer.weight_decay must be a finite number"]),
    (["--runner_wrapper.scale_sense", ".nan"], ["runner_wrapper.scale_sense must be a finite number"]),
    (["--context.mode", "True"], ["context.mode must be one of"]),
    (["--optimizer.type", "[AdamW]"], ["optimizer.type must be one of"]),
])
def test_nonsense_values_are_refused_naming_the_key(tiny_assets, tmp_path, capsys, extra, words):
    base, data, _ = tiny_assets
    _fails(tiny.flags(base, data, str(tmp_path / "out"), *extra), capsys, *words)


def test_an_empty_output_dir_is_refused(tiny_assets, capsys):
    base, data, _ = tiny_assets
    _fails(["--config", tiny.TINY_YAML, "--load_checkpoint", base, "--train_dataset_dir", data,
            "--output_dir", ""], capsys, "output_dir must be a non-empty string")


def test_finetune_subcommand_takes_section_key_pairs(tiny_assets, tmp_path, capsys):
    base, data, _ = tiny_assets
    out = str(tmp_path / "out")
    assert cli_main(["finetune", *tiny.flags(base, data, out, "--runner_config.max_steps", "1")]) == 0
    assert "step 1/8" in capsys.readouterr().out
    assert cli_main(["finetune", *tiny.flags(base, data, out, "--max-steps", "1")]) == 2
    assert "did you mean --max_steps" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:  # other subcommands take no --section.key pairs
        cli_main(["merge", "--base", base, "--out", str(tmp_path / "x.ckpt"), "--bogus", "1"])
    assert exit_info.value.code == 2


def test_a_yaml_of_nested_aliases_is_refused_at_once(tmp_path):
    """About 400 bytes that expand to 9**9 items: the message must not build their repr."""
    lines = ["a: &a [1, 1, 1, 1, 1, 1, 1, 1, 1]"]
    for prev, name in zip("abcdefgh", "bcdefghi"):
        lines.append(f"{name}: &{name} [{', '.join(['*' + prev] * 9)}]")
    lines.append("seed: *i")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    assert path.stat().st_size < 600
    with pytest.raises(TypeError, match="seed must be an int"):
        RunConfig.from_yaml(str(path))


def test_a_device_this_build_lacks_is_refused_before_any_work(tiny_assets, tmp_path, capsys):
    base, data, _ = tiny_assets
    _fails(tiny.flags(base, data, str(tmp_path / "out"), "--device_target", "Ascend"), capsys,
           "device_target 'Ascend' is not available to this MindSpore build")


def _write_rows(path, input_ids, labels):
    writer = FileWriter(path, shard_num=1, overwrite=True)
    length = len(input_ids[0])
    writer.add_schema({"input_ids": {"type": "int32", "shape": [length]},
                       "labels": {"type": "int32", "shape": [length]}}, "rows")
    writer.write_raw_data([{"input_ids": np.array(i, np.int32), "labels": np.array(lab, np.int32)}
                           for i, lab in zip(input_ids, labels)])
    writer.commit()
    return path


@pytest.mark.parametrize("case, words", [
    ("negative", ["row 3 holds input id -5, outside the model's vocabulary [0, 260)"]),
    ("out_of_vocab", ["row 3 holds input id 300, outside the model's vocabulary [0, 260)"]),
    ("bad_label", ["row 3 holds label 999"]),
    ("no_labels", ["every label is the ignore index -100"]),
])
def test_data_a_model_cannot_train_on_is_refused_before_training(tiny_assets, tmp_path, capsys, case, words):
    base, _, _ = tiny_assets
    rng = np.random.default_rng(0)
    ids = rng.integers(0, 260, (8, 16)).tolist()
    labels = [[-100] * 12 + row[12:] for row in ids]
    if case == "negative":
        ids[3][5] = -5
    elif case == "out_of_vocab":
        ids[3][5] = 300
    elif case == "bad_label":
        labels[3][14] = 999
    else:
        labels = [[-100] * 16 for _ in ids]
    data = _write_rows(str(tmp_path / f"{case}.mindrecord"), ids, labels)
    out = str(tmp_path / "out")
    _fails(tiny.flags(base, data, out), capsys, *words)
    assert not os.path.exists(os.path.join(out, "summary.json"))


def test_resume_from_beyond_the_run_is_refused(tiny_assets, tmp_path, capsys):
    base, data, _ = tiny_assets
    out = str(tmp_path / "out")
    assert run_main(tiny.flags(base, data, out, "--max_steps", "4")) == 0
    capsys.readouterr()
    _fails(tiny.flags(base, data, out, "--resume", "--max_steps", "2"), capsys,
           "is at step 4, beyond this run's last step 2")


def test_an_output_dir_that_is_a_file_is_refused_before_the_model_is_built(tiny_assets, tmp_path, capsys):
    base, data, _ = tiny_assets
    out = tmp_path / "out"
    out.write_text("not a folder")
    _fails(tiny.flags(base, data, str(out)), capsys, "is a file, not a directory")
    assert out.read_text() == "not a folder"


def test_a_damaged_resume_record_is_named(tiny_assets, tmp_path, capsys):
    base, data, _ = tiny_assets
    out = tmp_path / "out"
    (out / "checkpoint").mkdir(parents=True)
    (out / "checkpoint" / "tiny_step000002.json").write_text('{"step": 2, "adapter": ')
    _fails(tiny.flags(base, data, str(out), "--resume"), capsys, "tiny_step000002.json is not valid JSON")


def test_a_template_or_model_config_that_is_not_yaml_names_the_file(tmp_path, capsys):
    bad = tmp_path / "t.json"
    bad.write_text('{"prompt_input": ')
    src = tmp_path / "a.json"
    src.write_text('[{"instruction": "a", "output": "b"}]')
    assert cli_main(["data", "--src", str(src), "--dst", str(tmp_path / "a.mindrecord"), "--seq_length", "8",
                     "--template", str(bad)]) == 2
    assert "t.json: not valid JSON" in capsys.readouterr().err
    assert cli_main(["convert-base", "--from", "mindspore", "--src", str(src), "--out", str(tmp_path / "hf"),
                     "--model-config", str(bad)]) == 2
    assert "t.json: not valid JSON" in capsys.readouterr().err
