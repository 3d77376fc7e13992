"""LoraConfig: MindFormers keys and defaults, every bad input named, dict / YAML sources."""
import re

import pytest
import yaml
from mindspore import dtype as mstype

from mindpet_lite.pet import LoraConfig, load_pet_config

TARGET = ".*wq|.*wk|.*wv|.*wo"


def make(**kw):
    kw.setdefault("target_modules", TARGET)
    return LoraConfig(**kw)


def test_defaults_are_mindformers():
    cfg = make()
    assert (cfg.pet_type, cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout) == ("lora", 8, 16, 0.01)
    assert (cfg.lora_a_init, cfg.lora_b_init) == ("normal", "zero")
    assert cfg.param_init_type is None and cfg.compute_dtype is None
    assert cfg.exclude_layers is None and cfg.freeze_include is None and cfg.freeze_exclude is None
    assert cfg.use_rslora is False
    assert cfg.scaling == 2.0
    assert make(lora_rank=16, lora_alpha=8, use_rslora=True).scaling == pytest.approx(2.0)


@pytest.mark.parametrize("bad", ["prefix", "LORA_X", None, 3])
def test_unknown_pet_type(bad):
    with pytest.raises(ValueError, match="pet_type"):
        make(pet_type=bad)


def test_pet_type_case_insensitive():
    assert make(pet_type="LoRA").pet_type == "lora"


def test_unknown_key_suggests_closest():
    with pytest.raises(ValueError, match=r"unknown key 'lora_ranks'; did you mean 'lora_rank'\?"):
        LoraConfig.from_dict({"lora_ranks": 8, "target_modules": TARGET})
    with pytest.raises(ValueError, match=r"'target_module'.*did you mean 'target_modules'"):
        LoraConfig.from_dict({"target_module": TARGET})
    with pytest.raises(ValueError, match="unknown key 'zzz'"):
        LoraConfig.from_dict({"zzz": 1, "target_modules": TARGET})


@pytest.mark.parametrize("key, value, exc", [
    ("lora_rank", 0, ValueError), ("lora_rank", -2, ValueError), ("lora_rank", 2.0, TypeError),
    ("lora_rank", True, TypeError), ("lora_rank", "8", TypeError),
    ("lora_alpha", 0, ValueError), ("lora_alpha", "16", TypeError), ("lora_alpha", None, TypeError),
    ("lora_dropout", 1.0, ValueError), ("lora_dropout", -0.1, ValueError), ("lora_dropout", 0, TypeError),
    ("lora_dropout", "0.1", TypeError),
    ("use_rslora", 1, TypeError),
    ("lora_a_init", "not_an_init", ValueError), ("lora_b_init", [0], TypeError),
    ("param_init_type", "float64", TypeError), ("compute_dtype", mstype.int32, TypeError),
    ("freeze_include", "*wq*", TypeError), ("freeze_exclude", [1], TypeError),
])
def test_bad_values_name_the_key(key, value, exc):
    with pytest.raises(exc, match=key):
        make(**{key: value})


def test_target_modules_missing():
    with pytest.raises(ValueError, match="target_modules is missing"):
        LoraConfig()
    with pytest.raises(ValueError, match="target_modules"):
        LoraConfig.from_dict({"lora_rank": 4})


def test_target_modules_invalid_regex_quotes_re_error():
    bad = ".*wq|(.*wk"
    try:
        re.compile(bad)
    except re.error as err:
        text = str(err)
    with pytest.raises(ValueError, match="target_modules") as info:
        make(target_modules=bad)
    assert text in str(info.value)
    assert repr(bad) in str(info.value)


@pytest.mark.parametrize("bad, exc", [("", TypeError), (5, TypeError), ([1, 2], TypeError)])
def test_target_modules_wrong_type(bad, exc):
    with pytest.raises(exc, match="target_modules"):
        make(target_modules=bad)


def test_target_modules_list_is_alternatives():
    cfg = make(target_modules=["wq", r"model\.layers\.0\.attention\.wo"])
    assert cfg.target_regex.fullmatch("model.layers.0.attention.wo")
    assert cfg.target_regex.match("wq")


def test_exclude_layers_string_is_one_pattern():
    cfg = make(exclude_layers="wq|wk")
    assert cfg.exclude_layers == ["wq|wk"]  # never ['w', 'q', '|', ...]
    assert [r.pattern for r in cfg.exclude_regexes] == ["wq|wk"]
    cfg = make(exclude_layers=["wq", "wk"])
    assert cfg.exclude_layers == ["wq", "wk"]


@pytest.mark.parametrize("bad, exc", [(3, TypeError), ([1], TypeError), ({"a": 1}, TypeError),
                                      (["ok", "(bad"], ValueError)])
def test_exclude_layers_bad(bad, exc):
    with pytest.raises(exc, match="exclude_layers"):
        make(exclude_layers=bad)


@pytest.mark.parametrize("name, dtype", [("float16", mstype.float16), ("bfloat16", mstype.bfloat16),
                                         ("float32", mstype.float32)])
def test_dtypes_as_strings_or_mindspore(name, dtype):
    assert make(param_init_type=name, compute_dtype=name).compute_dtype == dtype
    cfg = make(param_init_type=dtype, compute_dtype=dtype)
    assert cfg.param_init_type == dtype and cfg.compute_dtype == dtype
    assert cfg.to_dict()["compute_dtype"] == name


def test_to_dict_round_trip():
    cfg = make(lora_rank=4, lora_alpha=8.0, lora_dropout=0.0, compute_dtype="float16",
               exclude_layers="wo", freeze_exclude=["*norm*"], use_rslora=True)
    again = LoraConfig.from_dict(cfg.to_dict())
    assert again == cfg


BLOCK = {"pet_type": "lora", "lora_rank": 16, "lora_alpha": 16, "lora_dropout": 0.05,
         "target_modules": TARGET}


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(yaml.safe_dump(content) if not isinstance(content, str) else content)
    return str(path)


def test_from_yaml_block_pet_config_and_run_yaml(tmp_path):
    block = _write(tmp_path, "block.yaml", BLOCK)
    keyed = _write(tmp_path, "keyed.yaml", {"pet_config": BLOCK})
    run = _write(tmp_path, "run.yaml", {
        "seed": 0, "run_mode": "finetune",
        "model": {"arch": {"type": "LlamaForCausalLM"},
                  "model_config": {"type": "LlamaConfig", "hidden_size": 4096, "pet_config": BLOCK}},
        "runner_config": {"epochs": 2}})
    for path in (block, keyed, run):
        cfg = LoraConfig.from_yaml(path)
        assert (cfg.lora_rank, cfg.lora_alpha, cfg.lora_dropout, cfg.target_modules) == (16, 16, 0.05, TARGET)
        assert load_pet_config(path) == cfg
    assert load_pet_config(BLOCK) == cfg
    assert load_pet_config(cfg) is cfg


def test_from_yaml_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        LoraConfig.from_yaml(str(tmp_path / "nope.yaml"))
    run = _write(tmp_path, "run.yaml", {"model": {"model_config": {"hidden_size": 8}}})
    with pytest.raises(ValueError, match="model.model_config.pet_config"):
        LoraConfig.from_yaml(run)
    typo = _write(tmp_path, "typo.yaml", {"pet_config": dict(BLOCK, lora_dropuot=0.1)})
    with pytest.raises(ValueError, match="'lora_dropuot'.*did you mean 'lora_dropout'"):
        LoraConfig.from_yaml(typo)
    scalar = _write(tmp_path, "scalar.yaml", "just text\n")
    with pytest.raises(ValueError, match="mapping"):
        LoraConfig.from_yaml(scalar)
    broken = _write(tmp_path, "broken.yaml", "a: [1, 2\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        LoraConfig.from_yaml(broken)


def test_load_pet_config_rejects_other_types():
    with pytest.raises(TypeError, match="pet_config"):
        load_pet_config(42)
    with pytest.raises(TypeError, match="pet_config"):
        LoraConfig.from_dict(["lora"])
