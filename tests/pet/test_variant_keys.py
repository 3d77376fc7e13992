"""The PEFT variant keys of pet_config (rank_pattern, alpha_pattern, layers_to_transform, layers_pattern,
modules_to_save, loraplus_lr_ratio): typos and bad values named, PEFT's matching rules (checked against
the installed peft's own functions), and what get_pet_model builds from them."""
import json

import numpy as np
import pytest
import yaml

from mindpet_lite.graph.freeze import lora_cells
from mindpet_lite.pet import LoraConfig, get_pet_model
from mindpet_lite.pet import variants
from tests.adapters.conftest import ALL_TARGETS, tiny_llama

TARGET = ".*wq|.*wk|.*wv|.*wo"
LLAMA_PATHS = [f"model.layers.{i}.{m}" for i in range(3)
               for m in ("attention.wq", "attention.wv", "feed_forward.w2", "attention_norm")] + ["lm_head"]


def make(**kw):
    kw.setdefault("target_modules", TARGET)
    return LoraConfig(**kw)


# ---- typos and bad values ---------------------------------------------------------------------
@pytest.mark.parametrize("typo, key", [("rank_patern", "rank_pattern"), ("alpha_patterns", "alpha_pattern"),
                                       ("layers_to_transfrom", "layers_to_transform"),
                                       ("layer_pattern", "layers_pattern"), ("module_to_save", "modules_to_save"),
                                       ("loraplus_lr_ration", "loraplus_lr_ratio")])
def test_a_misspelled_variant_key_names_the_right_one(typo, key):
    with pytest.raises(ValueError, match=rf"unknown key '{typo}'; did you mean '{key}'\?"):
        LoraConfig.from_dict({typo: 1, "target_modules": TARGET})


@pytest.mark.parametrize("key, value, exc, text", [
    ("rank_pattern", {"wq": 0}, ValueError, r"rank_pattern\['wq'\] must be an int > 0, got 0"),
    ("rank_pattern", {"wq": 2.5}, TypeError, r"rank_pattern\['wq'\] must be an int > 0"),
    ("rank_pattern", {"wq": True}, TypeError, r"rank_pattern\['wq'\]"),
    ("rank_pattern", "wq", TypeError, "rank_pattern must be a mapping of layer-path regex -> rank"),
    ("rank_pattern", {"(wq": 4}, ValueError, r"rank_pattern key '\(wq' is not a valid regex"),
    ("rank_pattern", {"": 4}, TypeError, "rank_pattern keys must be non-empty regex strings"),
    ("alpha_pattern", {"wq": 0}, ValueError, r"alpha_pattern\['wq'\] must be a finite int or float other than 0"),
    ("alpha_pattern", {"wq": float("nan")}, ValueError, r"alpha_pattern\['wq'\]"),
    ("alpha_pattern", {"wq": float("inf")}, ValueError, r"alpha_pattern\['wq'\]"),
    ("alpha_pattern", {"wq": "8"}, TypeError, r"alpha_pattern\['wq'\]"),
    ("alpha_pattern", [1, 2], TypeError, "alpha_pattern must be a mapping"),
    ("layers_to_transform", -1, ValueError, r"layers_to_transform must be a layer index \(an int >= 0\)"),
    ("layers_to_transform", [0, -2], ValueError, "layers_to_transform .* got item -2"),
    ("layers_to_transform", "0", TypeError, "layers_to_transform must be a layer index"),
    ("layers_to_transform", [], TypeError, "layers_to_transform must be"),
    ("layers_to_transform", [True], TypeError, "layers_to_transform .* got item True"),
    ("layers_to_transform", [1.0], TypeError, "layers_to_transform .* got item 1.0"),
    ("modules_to_save", [], TypeError, "modules_to_save must be a cell name"),
    ("modules_to_save", [""], TypeError, "modules_to_save must be a cell name"),
    ("modules_to_save", 3, TypeError, "modules_to_save must be a cell name .* got 3"),
    ("loraplus_lr_ratio", 0, ValueError, "loraplus_lr_ratio must be a number > 0, got 0"),
    ("loraplus_lr_ratio", -4.0, ValueError, "loraplus_lr_ratio must be a number > 0"),
    ("loraplus_lr_ratio", float("nan"), ValueError, "loraplus_lr_ratio must be a finite number"),
    ("loraplus_lr_ratio", float("inf"), ValueError, "loraplus_lr_ratio must be a finite number"),
    ("loraplus_lr_ratio", "16", TypeError, "loraplus_lr_ratio must be a number > 0"),
    ("loraplus_lr_ratio", True, TypeError, "loraplus_lr_ratio must be a number > 0"),
])
def test_bad_variant_values_name_key_value_and_what_is_allowed(key, value, exc, text):
    with pytest.raises(exc, match=text):
        make(**{key: value})


@pytest.mark.parametrize("value, exc, text", [
    (3, TypeError, "layers_pattern must be a regex string"),
    ("(layers", ValueError, r"layers_pattern '\(layers' is not a valid regex"),
])
def test_bad_layers_pattern(value, exc, text):
    with pytest.raises(exc, match=text):
        make(layers_pattern=value, layers_to_transform=[0])


def test_layers_pattern_needs_layers_to_transform():
    with pytest.raises(ValueError, match="layers_pattern='layers' needs layers_to_transform"):
        make(layers_pattern="layers")


def test_defaults_change_nothing_and_normalise():
    cfg = make()
    assert (cfg.rank_pattern, cfg.alpha_pattern, cfg.layers_to_transform, cfg.layers_pattern,
            cfg.modules_to_save, cfg.loraplus_lr_ratio) == ({}, {}, None, None, None, None)
    cfg = make(layers_to_transform=3, layers_pattern="layers", modules_to_save="lm_head", loraplus_lr_ratio=16)
    assert (cfg.layers_to_transform, cfg.layers_pattern, cfg.modules_to_save) == ([3], ["layers"], ["lm_head"])
    assert cfg.loraplus_lr_ratio == 16.0 and isinstance(cfg.loraplus_lr_ratio, float)


def test_every_variant_field_carries_help_text():
    import dataclasses
    fields = {f.name: f for f in dataclasses.fields(LoraConfig)}
    for key in ("rank_pattern", "alpha_pattern", "layers_to_transform", "layers_pattern", "modules_to_save",
                "loraplus_lr_ratio"):
        assert len(fields[key].metadata.get("help", "")) > 30, key


# ---- the matching rules, against PEFT's own functions -------------------------------------------
def test_pattern_rule_is_peft_get_pattern_key():
    get_pattern_key = pytest.importorskip("peft.utils.other").get_pattern_key
    keys_list = [["wq"], ["attention.wq", "wq"], [r"layers\.1\.attention\.wq", "wq"], ["q"], ["layers.0.*"],
                 ["w.", "feed_forward.w2"], ["lm_head", "norm"]]
    for keys in keys_list:
        for path in LLAMA_PATHS:
            peft_key = get_pattern_key(keys, path)
            ours = variants.pattern_key(keys, path)
            assert ours == (peft_key if peft_key in keys else None), (keys, path)


def test_first_matching_key_wins_and_survives_the_metadata_json():
    cfg = make(rank_pattern={r"layers\.1\.attention\.wq": 2, "wq": 6}, alpha_pattern={"wq": 3})
    assert [cfg.rank_for(f"model.layers.{i}.attention.wq") for i in range(3)] == [6, 2, 6]
    assert cfg.rank_for("model.layers.1.attention.wk") == 8  # lora_rank
    assert cfg.alpha_for("model.layers.0.attention.wq") == 3 and cfg.alpha_for("model.layers.0.attention.wk") == 16
    assert cfg.scaling_for("model.layers.1.attention.wq") == pytest.approx(3 / 2)
    back = LoraConfig.from_dict(json.loads(json.dumps(cfg.to_dict(), sort_keys=True)))  # as the metadata stores it
    assert list(back.rank_pattern.items()) == [(r"layers\.1\.attention\.wq", 2), ("wq", 6)]
    assert back == cfg


@pytest.mark.parametrize("layers, pattern", [([1], None), ([0, 2], None), (1, None), ([2], "layers"),
                                             ([0, 1], ["blocks", "layers"]), ([0], "attention")])
def test_layers_to_transform_rule_is_peft(layers, pattern):
    peft = pytest.importorskip("peft")
    check_target_module_exists = pytest.importorskip("peft.tuners.tuners_utils").check_target_module_exists
    leaves = ["wq", "wv", "w2", "attention_norm", "lm_head"]
    peft_cfg = peft.LoraConfig(target_modules=leaves, layers_to_transform=layers, layers_pattern=pattern)
    ours = make(target_modules=leaves, layers_to_transform=layers, layers_pattern=pattern)
    for path in LLAMA_PATHS:
        if path in leaves:  # PEFT keeps a module whose whole path is listed (lm_head); ours needs an index
            assert not ours.in_layers(path)
            continue
        assert ours.in_layers(path) == bool(check_target_module_exists(peft_cfg, path)), path


def test_yaml_block_reads_the_variant_keys(tmp_path):
    text = """
pet_config:
  pet_type: lora
  lora_rank: 4
  lora_alpha: 8
  target_modules: '.*wq|.*wv'
  rank_pattern: {'layers\\.1\\..*': 2}
  alpha_pattern: {wv: 2}
  layers_to_transform: [1]
  modules_to_save: [lm_head]
  loraplus_lr_ratio: 16.0
"""
    path = tmp_path / "pet.yaml"
    path.write_text(text)
    cfg = LoraConfig.from_yaml(str(path))
    assert cfg.rank_pattern == {r"layers\.1\..*": 2} and cfg.alpha_pattern == {"wv": 2}
    assert cfg.layers_to_transform == [1] and cfg.modules_to_save == ["lm_head"] and cfg.loraplus_lr_ratio == 16.0
    assert yaml.safe_load(text)["pet_config"]["rank_pattern"] == cfg.rank_pattern


# ---- get_pet_model ------------------------------------------------------------------------------
def test_each_layer_gets_its_own_rank_and_alpha():
    net = tiny_llama(lora=False)
    get_pet_model(net, dict(lora_rank=4, lora_alpha=8, lora_dropout=0.0, target_modules=ALL_TARGETS,
                            rank_pattern={"wq": 2, r"layers\.1\.feed_forward\.w2": 6}, alpha_pattern={"wv": 3}))
    cells = lora_cells(net)
    assert cells["model.layers.0.attention.wq"].mindpet_delta_lora_a.shape == (2, 64)
    assert cells["model.layers.1.attention.wq"].mindpet_delta_lora_b.shape == (64, 2)
    assert cells["model.layers.1.feed_forward.w2"].lora_rank == 6
    assert cells["model.layers.0.feed_forward.w2"].lora_rank == 4
    assert cells["model.layers.0.attention.wv"].scaling == pytest.approx(3 / 4)
    assert cells["model.layers.0.attention.wq"].scaling == pytest.approx(8 / 2)
    assert cells["model.layers.0.attention.wk"].scaling == pytest.approx(8 / 4)


def test_layers_to_transform_adapts_only_those_layers():
    net = tiny_llama(lora=False, num_layers=3)
    summary = get_pet_model(net, dict(lora_rank=4, lora_alpha=8, target_modules=".*wq|.*wv|lm_head",
                                      layers_to_transform=[0, 2])).pet_summary
    assert summary["replaced"] == ["model.layers.0.attention.wq", "model.layers.0.attention.wv",
                                   "model.layers.2.attention.wq", "model.layers.2.attention.wv"]


def test_layers_to_transform_outside_the_model_is_an_error_and_changes_nothing():
    net = tiny_llama(lora=False)
    with pytest.raises(ValueError, match=r"layers_to_transform \[5\] selects no target layer: target_modules "
                                         r"matches layers \[0, 1\]"):
        get_pet_model(net, dict(target_modules=".*wq", layers_to_transform=[1, 5]))
    assert not lora_cells(net)


def test_modules_to_save_are_trained_in_full_and_never_targets():
    net = tiny_llama(lora=False)
    get_pet_model(net, dict(lora_rank=4, lora_alpha=8, target_modules=".*wq|lm_head",
                            modules_to_save=["lm_head", "norm_out"]))
    assert "lm_head" not in lora_cells(net)
    trainable = sorted(p.name for p in net.trainable_params())
    assert "lm_head.weight" in trainable and "model.norm_out.weight" in trainable
    assert all("mindpet_delta_lora" in n for n in trainable if n not in ("lm_head.weight", "model.norm_out.weight"))
    assert len(trainable) == 2 * 2 + 2


def test_modules_to_save_that_match_nothing_are_an_error_and_change_nothing():
    net = tiny_llama(lora=False)
    with pytest.raises(ValueError, match=r"modules_to_save \['lm_haed'\] matches no cell"):
        get_pet_model(net, dict(target_modules=".*wq", modules_to_save=["lm_head", "lm_haed"]))
    assert not lora_cells(net)
    assert all(p.requires_grad for p in net.get_parameters())  # nothing frozen either


def test_unused_patterns_are_a_warning(caplog):
    net = tiny_llama(lora=False)
    get_pet_model(net, dict(target_modules=".*wq", rank_pattern={"wk": 2}))
    assert "rank_pattern key 'wk' matches no LoRA target" in caplog.text
    assert all(c.lora_rank == 8 for c in lora_cells(net).values())
    assert np.isfinite(net.model.layers[0].attention.wq.mindpet_delta_lora_a.asnumpy()).all()
