"""_checks: the shared unknown-key checker, the bool reader, the value checks and the exit status."""
import argparse
import re

import pytest

from mindpet_lite import _checks

VALID = ("lora_rank", "lora_alpha", "target_modules")


# ---- split_known_keys ---------------------------------------------------------------------------------
def test_known_keys_are_used_in_the_mapping_order():
    used, ignored = _checks.split_known_keys("pet_config", {"target_modules": "x", "lora_rank": 4}, VALID)
    assert used == {"target_modules": "x", "lora_rank": 4} and list(used) == ["target_modules", "lora_rank"]
    assert ignored == []


@pytest.mark.parametrize("strict", [True, False])
def test_a_typo_is_an_error_naming_section_key_and_closest_valid_key(strict):
    with pytest.raises(ValueError) as info:
        _checks.split_known_keys("pet_config", {"lora_rnak": 4}, VALID, strict=strict)
    message = str(info.value)
    assert message.startswith("pet_config: unknown key 'lora_rnak'; did you mean 'lora_rank'?")
    assert "valid keys: lora_rank, lora_alpha, target_modules" in message


def test_strict_refuses_an_unrelated_key_tolerant_skips_it():
    with pytest.raises(ValueError, match=re.escape("pet_config: unknown key 'zzz' (valid keys: ")):
        _checks.split_known_keys("pet_config", {"zzz": 1}, VALID, strict=True)
    used, ignored = _checks.split_known_keys("model_config", {"zzz": 1, "lora_rank": 2, "qqq": 3}, VALID)
    assert used == {"lora_rank": 2} and ignored == ["zzz", "qqq"]


def test_known_ignored_keys_are_skipped_even_when_close_to_a_valid_key():
    # 'bos_token_id' is close to 'pad_token_id' but is a MindFormers key the caller knowingly skips
    valid = ("pad_token_id", "hidden_size")
    used, ignored = _checks.split_known_keys("model_config", {"bos_token_id": 1, "pad_token_id": 0}, valid,
                                             known_ignored=("bos_token_id",), strict=True)
    assert used == {"pad_token_id": 0} and ignored == ["bos_token_id"]
    with pytest.raises(ValueError, match="did you mean 'pad_token_id'"):
        _checks.split_known_keys("model_config", {"bos_token_id": 1}, valid)


def test_a_section_that_is_not_a_mapping():
    with pytest.raises(TypeError, match=re.escape("optimizer must be a mapping, got [1] (list)")):
        _checks.split_known_keys("optimizer", [1], VALID)


# ---- the bool reader -----------------------------------------------------------------------------------
@pytest.mark.parametrize("value, want", [(True, True), (False, False), ("True", True), ("true", True),
                                         ("TRUE", True), ("False", False), ("false", False), ("fAlSe", False)])
def test_to_bool_reads_bools_and_true_false_text(value, want):
    assert _checks.to_bool("use_parallel", value) is want


@pytest.mark.parametrize("value", ["yes", "no", "1", "0", "", "t", "True ", 1, 0, None, 1.0, [True]])
def test_to_bool_refuses_anything_else(value):
    with pytest.raises(TypeError) as info:
        _checks.to_bool("use_parallel", value)
    assert str(info.value) == f"use_parallel must be a bool, got {value!r} ({type(value).__name__})"


def test_bool_arg_in_argparse():
    parser = argparse.ArgumentParser()
    parser.add_argument("--flag", type=_checks.bool_arg)
    assert parser.parse_args(["--flag", "True"]).flag is True
    assert parser.parse_args(["--flag", "false"]).flag is False
    with pytest.raises(SystemExit) as info:
        parser.parse_args(["--flag", "yes"])
    assert info.value.code == 2


def test_bool_arg_error_names_the_value():
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape("expected True or False (any case), got 'on'")):
        _checks.bool_arg("on")


# ---- value checks --------------------------------------------------------------------------------------
def test_int_and_number_messages_say_what_is_allowed():
    assert _checks.check_int("epochs", 3, minimum=1) == 3
    with pytest.raises(ValueError, match=re.escape("epochs must be an int >= 1, got 0 (int)")):
        _checks.check_int("epochs", 0, minimum=1)
    with pytest.raises(TypeError, match=re.escape("epochs must be an int >= 1, got True (bool)")):
        _checks.check_int("epochs", True, minimum=1)
    with pytest.raises(ValueError, match=re.escape("lora_rank must be an int > 0, got 0 (int)")):
        _checks.check_positive_int("lora_rank", 0)
    with pytest.raises(ValueError, match=re.escape("beta1 must be a number >= 0 and < 1, got 1.0 (float)")):
        _checks.check_number("beta1", 1.0, minimum=0, below=1)
    with pytest.raises(TypeError, match=re.escape("eps must be a number > 0, got '1e-8' (str) (YAML reads")):
        _checks.check_number("eps", "1e-8", above=0)
    assert _checks.check_number("eps", 1e-8, above=0) == 1e-8


def test_choice_suggests_the_closest_value():
    assert _checks.check_choice("device_target", "CPU", ("CPU", "Ascend", "GPU")) == "CPU"
    with pytest.raises(ValueError, match=re.escape("device_target must be one of ['CPU', 'Ascend', 'GPU'], "
                                                   "got 'cpu' (str); did you mean 'CPU'?")):
        _checks.check_choice("device_target", "cpu", ("CPU", "Ascend", "GPU"))
    with pytest.raises(ValueError, match="got True"):  # a bool is not the choice 1
        _checks.check_choice("mode", True, (0, 1))
    with pytest.raises(ValueError, match=re.escape("got [0] (list)")):  # unhashable, refused cleanly
        _checks.check_choice("mode", [0], {0: "graph"})


# ---- exit status ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("err", [ValueError("x"), TypeError("x"), KeyError("x"), FileNotFoundError("x"),
                                 IsADirectoryError("x"), NotADirectoryError("x"), FileExistsError("x"),
                                 NotImplementedError("x")])
def test_bad_input_exits_2(err):
    assert _checks.exit_status(err) == 2


@pytest.mark.parametrize("err", [OSError("disk full"), PermissionError("x"), RuntimeError("x"),
                                 FloatingPointError("loss is nan"), MemoryError(), ImportError("x")])
def test_failure_while_working_exits_1(err):
    assert _checks.exit_status(err) == 1
