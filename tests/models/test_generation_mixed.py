"""generate(adapter_names=...): a mixed batch of 3 adapters + base against 4 single-adapter runs (fresh
networks each holding one adapter, built without named adapters), token for token and logits within
1e-5; adapters of different ranks and targets; switching; the refusals."""
import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor

from mindpet_lite.graph.adapters import disable_adapter, list_adapters, set_adapter
from mindpet_lite.graph.freeze import lora_cells
from mindpet_lite.models import LlamaConfig, LlamaForCausalLM
from mindpet_lite.models.generation import generate
from mindpet_lite.pet import get_pet_model
from tests.modes import pynative

ms.set_device("CPU")

TINY = dict(hidden_size=32, num_layers=2, num_heads=4, n_kv_heads=2, vocab_size=64, seq_length=24,
            intermediate_size=48)
PROMPTS = [[5, 9, 3, 17, 22, 8], [40, 2], [11, 12, 13, 14], [7, 7, 30]]
NEW = 6
TARGETS = ".*wq|.*wv|.*w2"
# name: (rank, alpha, rslora, targets, seed); "a" is the first adapter of the multi-adapter network
ADAPTERS = {"a": (4, 8, False, TARGETS, 11), "b": (4, 8, False, TARGETS, 12),
            "c": (2, 3, True, ".*wq", 13)}  # another rank, scaling rule and fewer layers


@pytest.fixture(scope="module", autouse=True)
def base_arrays():
    """Base weights (norms off ones, so a norm mix-up would show), shared by every network here."""
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_seed(1)
    rng = np.random.default_rng(1)
    params = LlamaForCausalLM(LlamaConfig.from_dict(TINY)).parameters_and_names()
    return {name: (1.0 + 0.2 * rng.standard_normal(p.shape)).astype(np.float32) if "norm" in name else p.asnumpy()
            for name, p in params}


def _factors(name):
    """{cell path: (A, B)} of an adapter, drawn from its seed, for the layers it targets."""
    rank, _, _, targets, seed = ADAPTERS[name]
    rng = np.random.default_rng(seed)
    probe = _build_single(None, _BASE["arrays"])
    get_pet_model(probe, dict(target_modules=targets, lora_rank=rank, lora_alpha=1, lora_dropout=0.0))
    return {path: ((0.3 * rng.standard_normal((rank, c.in_channels))).astype(np.float32),
                   (0.3 * rng.standard_normal((c.out_channels, rank))).astype(np.float32))
            for path, c in sorted(lora_cells(probe).items())}


_BASE = {}


def _single(name, base=None):
    """A network with the base weights and at most one adapter (no named adapters involved), built once
    per adapter (its compiled graphs are reused)."""
    base = _BASE.setdefault("arrays", base) if base is not None else _BASE["arrays"]
    key = ("single", name)
    if key not in _BASE:
        _BASE[key] = _build_single(name, base)
    return _BASE[key]


def _build_single(name, base):
    net = LlamaForCausalLM(LlamaConfig.from_dict(TINY))
    for pname, p in net.parameters_and_names():
        p.set_data(Tensor(base[pname]))
    if name is not None:
        rank, alpha, rslora, targets, _ = ADAPTERS[name]
        get_pet_model(net, dict(target_modules=targets, lora_rank=rank, lora_alpha=alpha, use_rslora=rslora,
                                lora_dropout=0.0))
        cells = lora_cells(net)
        for path, (a, b) in _factors(name).items():
            cells[path].mindpet_delta_lora_a.set_data(Tensor(a))
            cells[path].mindpet_delta_lora_b.set_data(Tensor(b))
    net.set_train(False)
    return net


def _multi(base):
    _BASE.setdefault("arrays", base)
    net = _build_single("a", base)
    cells = lora_cells(net)
    for name in ("b", "c"):
        rank, alpha, rslora, _, _ = ADAPTERS[name]
        for path, (a, b) in _factors(name).items():
            cells[path].add_adapter(name, rank, alpha, Tensor(a), Tensor(b), use_rslora=rslora)
    return net


@pytest.fixture(scope="module")
def multi(base_arrays):
    """The multi-adapter network the generating tests share (its compiled graphs are reused); a test
    that switches the active adapter switches it back."""
    return _multi(base_arrays)


@pytest.mark.parametrize("use_past", [True, False])
def test_mixed_batch_equals_single_adapter_runs(multi, use_past):
    net = multi
    assert list_adapters(net) == ["default", "b", "c"]
    names = ["c", "__base__", "default", "b"]
    mixed, mixed_logits = generate(net, PROMPTS, NEW, adapter_names=names, use_past=use_past, output_logits=True)
    for row, name in enumerate(names):
        single = _single({"default": "a", "__base__": None}.get(name, name))
        with pynative():  # the reference: no graph compiles for each single-adapter network
            seqs, logits = generate(single, PROMPTS, NEW, use_past=use_past, output_logits=True)
        assert mixed[row] == seqs[row], name
        for step in range(NEW):
            np.testing.assert_allclose(mixed_logits[step][row], logits[step][row], atol=1e-5, rtol=0)


def test_switching_equals_a_fresh_single_adapter_network(multi):
    net = multi
    with pynative():  # the references: no graph compiles for each single-adapter network
        fresh = {name: generate(_single(name), PROMPTS, NEW) for name in ("a", "b", "c", None)}
    for name in ["c", "b", "default", "c", "b"]:
        set_adapter(net, name)
        assert generate(net, PROMPTS, NEW) == fresh.get(name, fresh["a"]), name
    with disable_adapter(net):
        assert generate(net, PROMPTS, NEW) == fresh[None]
    assert generate(net, PROMPTS, NEW) == fresh["b"]
    set_adapter(net, "default")
    assert generate(net, PROMPTS, NEW) == fresh["a"]


def test_one_row_one_adapter_and_the_same_adapter_everywhere(multi):
    net = multi
    with pynative():  # the reference: no graph compiles for the single-adapter network
        single_b = generate(_single("b"), PROMPTS, NEW)
    assert generate(net, PROMPTS, NEW, adapter_names=["b"] * 4) == single_b
    assert generate(net, PROMPTS[1], NEW, adapter_names=["b"]) == [single_b[1]]


def test_adapter_names_refusals_before_any_work(base_arrays):
    net = _multi(base_arrays)
    with pytest.raises(ValueError, match=r"one name per row \(4 rows\), got 3"):
        generate(net, PROMPTS, NEW, adapter_names=["b", "c", "default"])
    with pytest.raises(ValueError, match=r"adapter_names\[2\]: unknown adapter 'zz'.*\['default', 'b', 'c'\]"):
        generate(net, PROMPTS, NEW, adapter_names=["b", "c", "zz", "default"])
    with pytest.raises(TypeError, match="adapter_names must be a list"):
        generate(net, PROMPTS, NEW, adapter_names="b")
    for cell in lora_cells(net).values():
        cell.merge()
    with pytest.raises(ValueError, match="unmerge them to mix adapters"):
        generate(net, PROMPTS, NEW, adapter_names=["b", "c", "__base__", "default"])
