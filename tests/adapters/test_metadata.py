"""Adapter metadata: the pinned base fingerprint, and metadata read back as a validated LoraConfig."""
import hashlib
import math

import numpy as np
import pytest
from mindspore.common.initializer import HeUniform, Initializer

from mindpet_lite.adapters import base_fingerprint, read_adapter, save_adapter
from mindpet_lite.adapters.metadata import lora_config
from mindpet_lite.pet.config import LoraConfig
from tests.adapters.conftest import small_net

# ------------------------------------------------------------------------------------------------
# base fingerprint
# ------------------------------------------------------------------------------------------------
SHAPES = {
    "model.tok_embeddings.embedding_weight": (64, 16),
    "model.layers.0.attention.wq.weight": (16, 16),
    "model.layers.0.attention.wq.mindpet_delta_lora_a": (4, 16),  # LoRA: not part of the base
    "model.layers.0.attention.wq.mindpet_delta_lora_b": (16, 4),
    "model.layers.0.attention_norm.weight": (16,),
    "model.norm_out.weight": (16,),
    "model.norm_out.weight.scale": (1,),  # a name that extends another: pairs sort by name, not by line
    "lm_head.weight": (64, 16),
}
# Every adapter saved so far carries this value: a change of the hashing orphans them all.
PINNED = {"sha256": "199357ce86674e67aae07c59532b41a2248b9be8a924ea4c6a69cd9f96ba9377", "params": 6, "numel": 2337}


def _documented_fingerprint(shapes):
    """The rule of adapters/metadata.py, written from its docstring: the (name, shape) pairs of the
    non-LoRA parameters sorted by name, one "name:[d0, d1]" line each, joined by newlines, sha256."""
    base = sorted((name, list(shape)) for name, shape in shapes.items() if "mindpet_delta_lora" not in name)
    text = "\n".join(f"{name}:{shape}" for name, shape in base)
    return {"sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(), "params": len(base),
            "numel": sum(math.prod(shape) for _, shape in base)}


def test_fingerprint_is_pinned():
    assert _documented_fingerprint(SHAPES) == PINNED  # the rule as documented gives the pinned value
    assert base_fingerprint(SHAPES) == PINNED
    # arrays give their shapes; the LoRA factors do not count
    arrays = {name: np.zeros(shape, np.float32) for name, shape in SHAPES.items()}
    assert base_fingerprint(arrays) == PINNED
    no_lora = {n: s for n, s in SHAPES.items() if "mindpet_delta_lora" not in n}
    assert base_fingerprint(no_lora) == PINNED


def test_fingerprint_sees_every_base_name_and_shape():
    for changed in ({**SHAPES, "model.norm_out.weight": (17,)}, {**SHAPES, "extra.weight": (2, 2)},
                    {k.replace("wq", "wk"): v for k, v in SHAPES.items()}):
        assert base_fingerprint(changed)["sha256"] != PINNED["sha256"]
        assert base_fingerprint(changed) == _documented_fingerprint(changed)


def test_fingerprint_of_a_network_is_that_of_its_shapes():
    net = small_net()
    shapes = {name: tuple(p.shape) for name, p in net.parameters_and_names()}
    assert base_fingerprint(net) == base_fingerprint(shapes) == _documented_fingerprint(shapes)
    with pytest.raises(TypeError, match="net must be"):
        base_fingerprint([("a", (1,))])


# ------------------------------------------------------------------------------------------------
# metadata -> LoraConfig
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
@pytest.mark.parametrize("rslora", [False, True], ids=["lora", "rslora"])
def test_saved_metadata_reads_back_as_the_same_config(tmp_path, suffix, rslora):
    config = LoraConfig(lora_rank=4, lora_alpha=8, lora_dropout=0.05, use_rslora=rslora, target_modules="fc1|fc2",
                        exclude_layers=["head"], param_init_type="float32", freeze_exclude=["head.*"])
    path = str(tmp_path / f"a{suffix}")
    save_adapter(small_net(rslora=rslora), path, config=config)
    _, meta = read_adapter(path)
    back = lora_config(meta)
    assert isinstance(back, LoraConfig) and back == config
    assert back.scaling == meta["scaling"] == (8 / 2 if rslora else 8 / 4)


def _meta(**changes):
    config = LoraConfig(lora_rank=4, lora_alpha=8, target_modules="fc1|fc2")
    return dict({"pet_config": config.to_dict(), "scaling": config.scaling}, **changes)


def test_a_scaling_that_disagrees_with_the_pet_config_is_refused():
    assert lora_config(_meta()).scaling == 2.0
    for wrong in (4.0, 2.0 / math.sqrt(4), "2.0"):
        with pytest.raises(ValueError, match="scaling .* disagrees with its pet_config"):
            lora_config(_meta(scaling=wrong))
    assert lora_config(_meta(scaling=None)).scaling == 2.0  # nothing stored: nothing to cross-check


@pytest.mark.parametrize("meta", [{}, None, {"scaling": 2.0}, {"pet_config": None, "scaling": 2.0},
                                  {"pet_config": {}, "source": "peft"}])
def test_no_pet_config_gives_none(meta):
    assert lora_config(meta) is None


class _ScaledNormal(Initializer):
    """A user's own initializer: MindSpore cannot rebuild it from its class name."""

    def _initialize(self, arr):
        arr[...] = 0.0


@pytest.mark.parametrize("suffix", [".ckpt", ".safetensors"])
def test_custom_initializers_fall_back_instead_of_failing(tmp_path, suffix):
    config = LoraConfig(lora_rank=4, lora_alpha=8, target_modules="fc1|fc2",
                        lora_a_init=HeUniform(negative_slope=math.sqrt(5)), lora_b_init=_ScaledNormal())
    path = str(tmp_path / f"a{suffix}")
    save_adapter(small_net(), path, config=config)
    _, meta = read_adapter(path)
    assert (meta["pet_config"]["lora_a_init"], meta["pet_config"]["lora_b_init"]) == ("HeUniform", "_ScaledNormal")
    back = lora_config(meta)
    assert back.lora_a_init == "HeUniform"  # a name MindSpore's initializer() knows: kept
    assert back.lora_b_init == LoraConfig.lora_b_init == "zero"  # unknown: the default
    assert (back.lora_rank, back.lora_alpha, back.target_modules, back.scaling) == (4, 8, "fc1|fc2", 2.0)
