"""Ptuning2Config / PrefixTuningConfig: MindFormers' keys and defaults, help text on every field, bad
input named (typos with the closest key, NaN), and load_pet_config's dispatch by pet_type."""
import dataclasses

import pytest
import yaml

from mindpet_lite.pet import LoraConfig, PrefixTuningConfig, Ptuning2Config, load_pet_config


def test_defaults_are_mindformers():
    p = Ptuning2Config()
    assert (p.pet_type, p.pre_seq_len, p.prefix_projection, p.projection_dim, p.dropout_prob) == (
        "ptuning2", 128, False, 128, 0.01)
    q = PrefixTuningConfig()
    assert (q.pet_type, q.prefix_token_num, q.mid_dim, q.dropout_rate) == ("prefixtuning", 128, 512, 0.1)
    assert q.encoder_args() == (128, True, 512, 0.1)  # MindFormers' prefix tuning always projects
    for cls in (Ptuning2Config, PrefixTuningConfig):
        assert all(f.metadata.get("help") for f in dataclasses.fields(cls) if f.name != "pet_type")


def test_dispatch_by_pet_type_and_round_trip(tmp_path):
    p = load_pet_config({"pet_type": "ptuning2", "pre_seq_len": 8, "prefix_projection": True})
    assert isinstance(p, Ptuning2Config) and p.pre_seq_len == 8
    assert load_pet_config(p.to_dict()) == p
    assert isinstance(load_pet_config({"pet_type": "PrefixTuning", "mid_dim": 16}), PrefixTuningConfig)
    assert isinstance(load_pet_config({"target_modules": ".*wq"}), LoraConfig)  # no pet_type: lora
    run = {"model": {"model_config": {"pet_config": {"pet_type": "ptuning2", "pre_seq_len": 4}}}}
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(run))
    assert load_pet_config(str(path)) == Ptuning2Config(pre_seq_len=4)


@pytest.mark.parametrize("block, match", [
    ({"pet_type": "ptuning2", "pre_seq_lens": 4}, r"unknown key 'pre_seq_lens'; did you mean 'pre_seq_len'\?"),
    ({"pet_type": "ptuning2", "lora_rank": 4}, r"unknown key 'lora_rank'"),
    ({"pet_type": "prefixtuning", "pre_seq_len": 4}, r"unknown key 'pre_seq_len'"),
    ({"pet_type": "ptuning", "pre_seq_len": 4}, r"pet_type must be one of .*did you mean 'ptuning2'\?"),
    ({"pet_type": "ptuning2", "pre_seq_len": 0}, r"pre_seq_len must be an int > 0, got 0"),
    ({"pet_type": "ptuning2", "pre_seq_len": 4.0}, r"pre_seq_len"),
    ({"pet_type": "ptuning2", "prefix_projection": "true"}, r"prefix_projection"),
    ({"pet_type": "ptuning2", "projection_dim": -2}, r"projection_dim"),
    ({"pet_type": "ptuning2", "dropout_prob": float("nan")}, r"dropout_prob"),
    ({"pet_type": "ptuning2", "dropout_prob": float("inf")}, r"dropout_prob"),
    ({"pet_type": "prefixtuning", "dropout_rate": 1.0}, r"dropout_rate"),
    ({"pet_type": "prefixtuning", "mid_dim": None}, r"mid_dim"),
    ({"pet_type": "ptuning2", "freeze_include": "x"}, r"freeze_include"),
])
def test_bad_input_is_named(block, match):
    with pytest.raises((TypeError, ValueError), match=match):
        load_pet_config(block)


def test_a_config_object_keeps_its_own_type():
    with pytest.raises(ValueError, match="pet_type must be 'ptuning2'"):
        Ptuning2Config(pet_type="lora")
    with pytest.raises(TypeError, match="pet_config must be a LoraConfig, .*Ptuning2Config, PrefixTuningConfig"):
        load_pet_config(3)
