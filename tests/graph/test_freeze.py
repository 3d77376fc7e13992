"""Freezing with MindPet's include / exclude semantics on a small transformer-like network."""
import logging

import numpy as np
import pytest
from mindspore import nn

from mindpet_lite.delta import LoRADense
from mindpet_lite.graph import (freeze_delta, freeze_from_config, freeze_modules, get_adapter_params,
                                set_trainable_params, trainable_params_report)


class Attention(nn.Cell):
    def __init__(self, d, rank):
        super().__init__()
        self.query = LoRADense(d, d, rank, 2 * rank)
        self.key = nn.Dense(d, d)
        self.value = LoRADense(d, d, rank, 2 * rank)
        self.dense = nn.Dense(d, d)


class Block(nn.Cell):
    def __init__(self, d, rank):
        super().__init__()
        self.layernorm = nn.LayerNorm((d,))
        self.attention = Attention(d, rank)


class Encoder(nn.Cell):
    def __init__(self, d=8, rank=2, layers=2, vocab=20):
        super().__init__()
        self.embedding = nn.Embedding(vocab, d)
        self.blocks = nn.CellList([Block(d, rank) for _ in range(layers)])


def _trainable(net):
    return {n for n, p in net.parameters_and_names() if p.requires_grad}


def _all(net):
    return {n for n, _ in net.parameters_and_names()}


def test_names_are_realistic():
    names = _all(Encoder())
    assert {"embedding.embedding_table", "blocks.0.layernorm.gamma", "blocks.1.layernorm.beta",
            "blocks.0.attention.query.weight", "blocks.0.attention.query.mindpet_delta_lora_a",
            "blocks.1.attention.value.mindpet_delta_lora_b", "blocks.1.attention.dense.bias"} <= names


def test_include_only_freezes_exclude_only_unfreezes_both_untouched():
    net = Encoder()
    freeze_modules(net, include=["*layernorm*", "embedding*"])
    assert _all(net) - _trainable(net) == {"embedding.embedding_table", "blocks.0.layernorm.gamma",
                                           "blocks.0.layernorm.beta", "blocks.1.layernorm.gamma",
                                           "blocks.1.layernorm.beta"}
    freeze_modules(net, exclude=["*.gamma"])
    assert "blocks.0.layernorm.gamma" in _trainable(net)
    assert "blocks.0.layernorm.beta" not in _trainable(net)
    # matching both: untouched, whatever its state
    before = _trainable(net)
    freeze_modules(net, include=["blocks.0.*"], exclude=["blocks.0.*"])
    assert _trainable(net) == before


def test_patterns_are_case_sensitive_globs():
    net = Encoder()
    freeze_modules(net, include=["*LAYERNORM*"])
    assert _trainable(net) == _all(net)
    freeze_modules(net, include=["blocks.?.attention.key.*"])
    assert _all(net) - _trainable(net) == {"blocks.0.attention.key.weight", "blocks.0.attention.key.bias",
                                           "blocks.1.attention.key.weight", "blocks.1.attention.key.bias"}


def test_freeze_delta_lora_keeps_only_lora_trainable():
    net = Encoder()
    freeze_delta(net, "LoRA")
    assert _trainable(net) == {n for n in _all(net) if "mindpet_delta_lora" in n}
    assert len(_trainable(net)) == 8


def test_freeze_delta_with_include_exclude_on_top():
    net = Encoder()
    freeze_delta(net, "lora", include=["blocks.1.*"], exclude=["*layernorm*"])
    lora = {n for n in _all(net) if "mindpet_delta_lora" in n}
    # blocks.0 norms match exclude only: unfrozen; blocks.1 norms match both: left frozen
    norms0 = {n for n in _all(net) if "layernorm" in n and n.startswith("blocks.0.")}
    assert _trainable(net) == {n for n in lora if n.startswith("blocks.0.")} | norms0


def test_freeze_delta_bitfit():
    net = Encoder()
    freeze_delta(net, "bitfit")
    assert _trainable(net) == {n for n in _all(net) if n.endswith("bias")}


@pytest.mark.parametrize("mode", ["lorax", "", 3, None])
def test_freeze_delta_bad_mode(mode):
    with pytest.raises(ValueError, match="mode"):
        freeze_delta(Encoder(), mode)


def test_freeze_modules_argument_checks():
    net = Encoder()
    with pytest.raises(TypeError, match="model"):
        freeze_modules("net", include=["*"])
    with pytest.raises(ValueError, match="include or exclude"):
        freeze_modules(net)
    with pytest.raises(TypeError, match="include"):
        freeze_modules(net, include=[])
    with pytest.raises(TypeError, match="include"):
        freeze_modules(net, include="*")
    with pytest.raises(TypeError, match="exclude"):
        freeze_modules(net, exclude=["*", 3])
    with pytest.raises(TypeError, match="include"):
        freeze_delta(net, "lora", include=("*",))
    assert _trainable(net) == _all(net)  # nothing changed by the failed calls


def test_freeze_from_config(tmp_path):
    net = Encoder()
    cfg = tmp_path / "freeze.yaml"
    cfg.write_text("freeze:\n  include: ['*']\n  exclude: ['*mindpet_delta_lora*', '*.dense.*']\n")
    freeze_from_config(net, str(cfg))
    assert _trainable(net) == {n for n in _all(net) if "mindpet_delta_lora" in n or ".dense." in n}
    only = tmp_path / "only.yaml"
    only.write_text("freeze:\n  include: ['embedding*']\n")
    net2 = Encoder()
    freeze_from_config(net2, str(only))
    assert _all(net2) - _trainable(net2) == {"embedding.embedding_table"}


@pytest.mark.parametrize("text, key", [
    ("other: 1\n", "freeze"),
    ("", "freeze"),
    ("freeze: [a, b]\n", "freeze"),
    ("freeze:\n  include: ['*']\n  exlude: ['*bias']\n", "exlude"),
])
def test_freeze_from_config_bad_content(tmp_path, text, key):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    with pytest.raises(ValueError, match=key):
        freeze_from_config(Encoder(), str(cfg))


def test_freeze_from_config_bad_path(tmp_path):
    with pytest.raises(TypeError, match="config_path"):
        freeze_from_config(Encoder(), 3)
    with pytest.raises(ValueError, match="config_path"):
        freeze_from_config(Encoder(), "")
    missing = str(tmp_path / "nope.yaml")
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        freeze_from_config(Encoder(), missing)


def test_adapter_params_and_report(caplog):
    net = Encoder(d=8, rank=2, layers=2, vocab=20)
    adapters = get_adapter_params(net)
    assert len(adapters) == 8 and all("mindpet_delta_lora" in n for n in adapters)
    set_trainable_params(net, adapters)
    assert _trainable(net) == set(adapters)
    with caplog.at_level(logging.INFO):
        report = trainable_params_report(net)
    total = sum(int(np.prod(p.shape)) for _, p in net.parameters_and_names())
    lora = 2 * 2 * (2 * 8 + 2 * 8)  # layers x cells x (A + B)
    assert report["total"] == total and report["trainable"] == lora
    assert report["percent"] == pytest.approx(100 * lora / total)
    assert "trainable params" in caplog.text
    with pytest.raises(KeyError, match="nope"):
        set_trainable_params(net, ["nope"])


# ---- trust at the edges ---------------------------------------------------------------------------------
def test_a_freeze_that_leaves_nothing_trainable_is_refused_and_changes_nothing():
    net = Encoder()
    before = _trainable(net)
    with pytest.raises(ValueError, match="no parameter trainable"):
        freeze_modules(net, include=["*"])
    with pytest.raises(ValueError, match="no parameter trainable"):
        freeze_delta(net, "lora", include=["*mindpet_delta_lora*"])
    with pytest.raises(ValueError, match="no prefixtuning parameters"):
        freeze_delta(net, "prefixtuning")
    assert _trainable(net) == before


def test_a_pattern_that_matches_nothing_is_a_warning_naming_it(caplog):
    net = Encoder()
    with caplog.at_level(logging.WARNING, logger="mindpet_lite.graph.freeze"):
        freeze_modules(net, include=["*layernrom*", "embedding*"])
    assert "'*layernrom*' matches no parameter" in caplog.text
    assert "embedding*" not in caplog.text
    assert "embedding.embedding_table" not in _trainable(net)


def test_long_pattern_lists_compile_each_glob_once(monkeypatch):
    """100k globs on a small network: one compiled regex per glob, not one per glob and parameter."""
    from mindpet_lite.graph import freeze as freeze_module
    compiled = []
    real_compile = freeze_module.re.compile

    class CountingRe:
        @staticmethod
        def compile(pattern, *args):
            compiled.append(pattern)
            return real_compile(pattern, *args)

    monkeypatch.setattr(freeze_module, "re", CountingRe)
    net = Encoder()
    patterns = [f"no_such_param_{i}*" for i in range(100_000)] + ["embedding*"]
    freeze_modules(net, include=patterns + patterns[:10])  # duplicates compile once too
    assert len(compiled) == len(patterns)
    assert "embedding.embedding_table" not in _trainable(net)


@pytest.mark.parametrize("names", ["abc", b"abc", [1, 2]])
def test_set_trainable_params_wants_a_collection_of_names(names):
    net = Encoder()
    with pytest.raises(TypeError, match="names must be a collection of parameter names"):
        set_trainable_params(net, names)


def test_freeze_config_that_is_not_yaml_names_the_file(tmp_path):
    path = tmp_path / "freeze.yaml"
    path.write_text("freeze: {include: [a\n")
    with pytest.raises(ValueError, match="freeze.yaml: not valid YAML"):
        freeze_from_config(Encoder(), str(path))
