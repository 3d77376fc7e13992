"""Named adapters on layers without LoRA cells (adapters/named.py): on a plain network the first named
adapter builds its cells and becomes the active one (PEFT's from_pretrained(base, path, adapter_name=));
a named adapter targeting layers beyond the existing cells adds cells there, where the others have no
delta. Adapters with disjoint targets mix in one batch with the logits of single-adapter networks."""
import numpy as np
import pytest

import mindspore as ms

import mindpet_lite
from mindpet_lite.adapters import load_adapter, save_adapter
from mindpet_lite.graph.freeze import lora_cells
from mindpet_lite.models.generation import generate
from mindpet_lite.pet import get_pet_model
from tests.adapters.conftest import randomize, tiny_llama

PROMPTS = [[5, 9, 3, 17, 22, 8], [40, 2, 6], [11, 12, 13, 14], [7, 7, 30]]
NEW = 3
CONFIGS = {"p": dict(lora_rank=4, lora_alpha=8, target_modules=".*wq|.*wk"),
           "q": dict(lora_rank=2, lora_alpha=3, target_modules=".*w1|.*w3", use_rslora=True)}
ATTN = [f"model.layers.{i}.attention.{m}" for i in (0, 1) for m in ("wq", "wk")]
FFN = [f"model.layers.{i}.feed_forward.{m}" for i in (0, 1) for m in ("w1", "w3")]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Two adapters of the tiny Llama (seed 0) with disjoint targets: p (attention wq / wk), q (ffn w1 / w3)."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    root = tmp_path_factory.mktemp("named")
    out = {}
    for i, (name, config) in enumerate(CONFIGS.items()):
        net = tiny_llama(lora=False)
        get_pet_model(net, dict(config, lora_dropout=0.0))
        out[name] = str(root / f"{name}.safetensors")
        save_adapter(randomize(net, seed=11 + i), out[name])
    return out


def _run(net, names=None):
    net.set_train(False)
    return generate(net, PROMPTS, NEW, adapter_names=names, output_logits=True)


@pytest.fixture(scope="module")
def singles(files):
    """{row name: (sequences, logits)} of single-adapter networks (the adapter loaded as the first one)."""
    ms.set_context(mode=ms.PYNATIVE_MODE)
    out = {"__base__": _run(tiny_llama(lora=False))}
    for name, path in files.items():
        net = tiny_llama(lora=False)
        load_adapter(net, path)
        out[name] = _run(net)
    return out


def _assert_rows(got, singles, names):
    seqs, logits = got
    for row, name in enumerate(names):
        want_seqs, want_logits = singles[name]
        assert seqs[row] == want_seqs[row], (row, name)
        for step in range(NEW):
            np.testing.assert_allclose(logits[step][row], want_logits[step][row], atol=1e-5, rtol=0,
                                       err_msg=f"row {row} ({name}) step {step}")


def test_named_adapters_on_a_plain_network_build_their_cells_and_mix(files, singles, tmp_path):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = tiny_llama(lora=False)
    load_adapter(net, files["p"], adapter_name="p")
    assert mindpet_lite.list_adapters(net) == ["default", "p"]
    assert sorted(lora_cells(net)) == sorted(ATTN)
    assert all(cell.active_adapter == "p" for cell in lora_cells(net).values())  # as PEFT: the loaded one is active
    _assert_rows(_run(net), singles, ["p"] * len(PROMPTS))

    load_adapter(net, files["q"], adapter_name="q")  # beyond p's cells: new cells at w1 / w3
    assert mindpet_lite.list_adapters(net) == ["default", "p", "q"]
    assert sorted(lora_cells(net)) == sorted(ATTN + FFN)
    names = ["q", "p", "__base__", "default"]  # "default": placeholders only, the base model
    _assert_rows(_run(net, names), dict(singles, default=singles["__base__"]), names)
    assert not any(p.requires_grad for n, p in net.parameters_and_names() if "mindpet_delta_lora" in n)
    with pytest.raises(ValueError, match="empty adapter"):  # "default" holds nothing of its own
        save_adapter(net, str(tmp_path / "default.ckpt"))


def test_a_named_adapter_beyond_the_first_adds_cells_where_the_first_has_no_delta(files, singles, tmp_path):
    ms.set_context(mode=ms.PYNATIVE_MODE)
    net = tiny_llama(lora=False)
    load_adapter(net, files["p"])  # the first adapter, on wq / wk
    load_adapter(net, files["q"], adapter_name="q")
    assert sorted(lora_cells(net)) == sorted(ATTN + FFN)
    assert all(cell.active_adapter == "default" for cell in lora_cells(net).values())  # active unchanged
    names = ["default", "q", "__base__", "q"]
    _assert_rows(_run(net, names), dict(singles, default=singles["p"]), names)

    # the first adapter is still p alone: saved without the placeholders, it loads strictly on its own
    path = str(tmp_path / "first.safetensors")
    meta = save_adapter(net, path)
    assert meta["pet_config"]["target_modules"] == CONFIGS["p"]["target_modules"]
    again = tiny_llama(lora=False)
    load_adapter(again, path)
    assert sorted(lora_cells(again)) == sorted(ATTN)
    _assert_rows(_run(again), singles, ["p"] * len(PROMPTS))
