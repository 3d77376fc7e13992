"""MindFormers: LoRA on a real tiny mindformers LlamaForCausalLM (built on CPU; its forward needs
Ascend kernels, so only single Linear layers are run), and MindFormers' own LoraModel building
mindpet_lite cells after use_mindpet_lite()."""
import os
import subprocess
import sys
import types

import numpy as np
import pytest

import mindspore as ms
from mindspore import Tensor, nn
from mindspore import dtype as mstype

from mindpet_lite.delta.lora import LoRADense
from mindpet_lite.integrations import mindformers as mf_integration
from mindpet_lite.integrations.mindformers import LoRALinear, use_mindpet_lite
from mindpet_lite.pet import get_pet_model
from tests.reference import lora_forward

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture(scope="module")
def mf():
    """mindformers, imported once for the module (several seconds) and only now, inside a fixture:
    an import at collection time would run before conftest moves to the scratch directory, and
    importing mindformers writes ./output/log."""
    pytest.importorskip("mindformers")
    # pylint: disable=import-outside-toplevel
    from mindformers.models import LlamaConfig, LlamaForCausalLM
    from mindformers.modules.layers import Linear
    from mindformers.pet import LoraConfig, LoraModel
    from mindformers.pet.tuners import lora_adapter
    return types.SimpleNamespace(LlamaConfig=LlamaConfig, LlamaForCausalLM=LlamaForCausalLM, Linear=Linear,
                                 LoraConfig=LoraConfig, LoraModel=LoraModel, lora_adapter=lora_adapter)


NUM_LAYERS = 2
PROJ = ("wq", "wk", "wv", "wo")
PET = {"pet_type": "lora", "lora_rank": 4, "lora_alpha": 8, "lora_dropout": 0.0,
       "target_modules": ".*wq|.*wk|.*wv|.*wo"}


def tiny_llama(mf):
    ms.set_seed(0)
    cfg = mf.LlamaConfig(num_layers=NUM_LAYERS, hidden_size=32, num_heads=4, n_kv_heads=2, vocab_size=64,
                        seq_length=16, intermediate_size=48, compute_dtype="float32",
                        param_init_type="float32", layernorm_compute_type="float32",
                        softmax_compute_type="float32", rotary_dtype="float32", use_flash_attention=False)
    return mf.LlamaForCausalLM(cfg)


def x_of(shape, seed=0):
    return Tensor(np.random.default_rng(seed).standard_normal(shape).astype(np.float32))


def test_mindformers_linear_is_recognised_without_importing(mf):
    assert mf_integration.is_available()
    assert mf_integration.is_loaded()
    assert mf_integration.is_linear(mf.Linear(4, 3))
    assert not mf_integration.is_linear(nn.Dense(4, 3))


def test_get_pet_model_replaces_exactly_the_attention_linears(mf):
    net = tiny_llama(mf)
    old = {path: cell for path, cell in net.cells_and_names()}
    get_pet_model(net, PET)
    paths = [path for path, cell in net.cells_and_names() if isinstance(cell, LoRADense)]
    expected = [f"model.layers.{i}.attention.{w}" for i in range(NUM_LAYERS) for w in PROJ]
    assert paths == expected
    cells = dict(net.cells_and_names())
    for path in expected:
        assert isinstance(old[path], mf.Linear)
        new = cells[path]
        assert isinstance(new, LoRALinear)
        assert new.weight is old[path].weight and new.weight.name == f"{path}.weight"
        assert new.mindpet_delta_lora_a.name == f"{path}.mindpet_delta_lora_a"
        assert new.mindpet_delta_lora_b.name == f"{path}.mindpet_delta_lora_b"
        assert new.dtype == mstype.float32 and new.mindpet_delta_lora_a.dtype == mstype.float32
    assert sum(isinstance(c, mf.Linear) for c in cells.values()) == 3 * NUM_LAYERS + 1  # w1 w2 w3, lm_head
    trainable = [p.name for p in net.trainable_params()]
    assert len(trainable) == 2 * 4 * NUM_LAYERS and all("mindpet_delta_lora" in n for n in trainable)


def test_replaced_model_linear_forward_equals_original_then_lora(mf, mode):  # pylint: disable=unused-argument
    net = tiny_llama(mf)
    wk = net.model.layers[0].attention.wk  # GQA: [16, 32]
    x = x_of((2, 5, 32))
    before = wk(x).asnumpy()
    get_pet_model(net, PET)
    new = net.model.layers[0].attention.wk
    np.testing.assert_allclose(new(x).asnumpy(), before, rtol=0, atol=1e-6)
    bmat = np.random.default_rng(1).standard_normal((16, 4)).astype(np.float32)
    new.mindpet_delta_lora_b.set_data(Tensor(bmat))
    want = lora_forward(x.asnumpy(), new.weight.asnumpy(), None, new.mindpet_delta_lora_a.asnumpy(), bmat, 2.0)
    np.testing.assert_allclose(new(x).asnumpy(), want, rtol=1e-5, atol=1e-5)


class Holder(nn.Cell):
    def __init__(self, proj):
        super().__init__()
        self.proj = proj

    def construct(self, x):
        return self.proj(x)


@pytest.mark.parametrize("rows", [3, 400])  # few and many rows (LoRADense may change form with N)
@pytest.mark.parametrize("transpose_b", [True, False])
def test_linear_layouts_bias_activation_and_merge(mf, mode, transpose_b, rows):  # pylint: disable=unused-argument
    ms.set_seed(2)
    linear = mf.Linear(6, 5, has_bias=True, activation="tanh", transpose_b=transpose_b,
                       bias_init="normal", param_init_type=mstype.float32, compute_dtype=mstype.float32)
    net = Holder(linear)
    x = x_of((rows, 6), seed=3)
    before = net(x).asnumpy()
    get_pet_model(net, {**PET, "target_modules": "proj"})
    cell = net.proj
    assert isinstance(cell, LoRALinear) and cell.transpose_b is transpose_b
    assert cell.weight is linear.weight and cell.bias is linear.bias
    assert tuple(cell.mindpet_delta_lora_a.shape) == (4, 6)
    assert tuple(cell.mindpet_delta_lora_b.shape) == (5, 4)
    np.testing.assert_allclose(net(x).asnumpy(), before, rtol=0, atol=1e-6)

    bmat = np.random.default_rng(4).standard_normal((5, 4)).astype(np.float32)
    cell.mindpet_delta_lora_b.set_data(Tensor(bmat))
    w = cell.weight.asnumpy()
    w_out_in = w if transpose_b else w.T
    want = lora_forward(x.asnumpy(), w_out_in, cell.bias.asnumpy(), cell.mindpet_delta_lora_a.asnumpy(),
                        bmat, 2.0, "tanh")
    np.testing.assert_allclose(net(x).asnumpy(), want, rtol=1e-5, atol=1e-5)
    cell.merge()  # the folded weight keeps the Linear's layout
    assert tuple(cell.weight.shape) == tuple(w.shape)
    np.testing.assert_allclose(net(x).asnumpy(), want, rtol=1e-4, atol=1e-4)
    cell.unmerge()
    np.testing.assert_allclose(cell.weight.asnumpy(), w, rtol=1e-5, atol=1e-6)


def test_linear_float16_compute_dtype_is_inherited(mf):
    linear = mf.Linear(8, 4, has_bias=False, param_init_type=mstype.float32, compute_dtype=mstype.float16)
    net = Holder(linear)
    x = x_of((2, 8))
    before = net(x).asnumpy()
    get_pet_model(net, {**PET, "target_modules": "proj"})
    assert net.proj.dtype == mstype.float16
    assert net.proj.mindpet_delta_lora_a.dtype == mstype.float32
    out = net(x)
    assert out.dtype == mstype.float32
    np.testing.assert_allclose(out.asnumpy(), before, rtol=0, atol=1e-6)


def test_expert_linear_is_refused_and_net_unchanged(mf):
    net = Holder(mf.Linear(8, 4, expert_num=2, has_bias=False))
    with pytest.raises(ValueError, match=r"proj.*expert_num"):
        get_pet_model(net, {**PET, "target_modules": "proj"})
    assert isinstance(net.proj, mf.Linear)


def _module_names(net):
    return {type(cell).__module__ for _, cell in net.cells_and_names()}


def test_use_mindpet_lite_makes_mindformers_lora_model_build_mindpet_lite_cells(mf):
    mindpet_cls = mf.lora_adapter.LoRADense
    assert mindpet_cls.__module__.startswith("mindpet.")
    config = mf.LoraConfig(lora_rank=4, lora_alpha=8, lora_dropout=0.0, target_modules=".*wq|.*wk|.*wv|.*wo")
    with use_mindpet_lite() as handle:
        assert mf.lora_adapter.LoRADense is LoRALinear
        model = mf.LoraModel(config, tiny_llama(mf))
    assert not handle.active and mf.lora_adapter.LoRADense is mindpet_cls
    assert not any(m.startswith("mindpet.") for m in _module_names(model))
    loras = [(p, c) for p, c in model.cells_and_names() if isinstance(c, LoRADense)]
    assert len(loras) == 4 * NUM_LAYERS
    assert all(type(c) is LoRALinear and p.rsplit(".", 1)[-1] in PROJ for p, c in loras)
    # the cell MindFormers assembled computes what the Linear did
    cell = loras[1][1]  # a wk: [16, 32]
    x = x_of((2, 32))
    base = x.asnumpy() @ cell.weight.asnumpy().T
    np.testing.assert_allclose(cell(x).asnumpy(), base, rtol=1e-5, atol=1e-5)
    names = [p.name for p in model.get_parameters()]
    assert sum(n.endswith("mindpet_delta_lora_a") for n in names) == 4 * NUM_LAYERS
    assert len(set(names)) == len(names)
    # the operators MindFormers' adapter shards under (semi-)auto parallel exist even at dropout 0,
    # and no Dropout runs in the forward (output equals the formula above, in training mode too)
    cell.lora_dropout.dropout.shard(((2, 1),))
    cell.mul.shard(((2, 1), ()))
    cell.set_train(True)
    np.testing.assert_allclose(cell(x).asnumpy(), base, rtol=1e-5, atol=1e-5)


def test_use_mindpet_lite_undo_and_without_patch_mindpet_is_used(mf):
    handle = use_mindpet_lite()
    assert mf.lora_adapter.LoRADense is LoRALinear
    handle.undo()
    handle.undo()  # idempotent
    assert mf.lora_adapter.LoRADense.__module__.startswith("mindpet.")
    config = mf.LoraConfig(lora_rank=4, lora_alpha=8, lora_dropout=0.0, target_modules=".*wq")
    model = mf.LoraModel(config, tiny_llama(mf))
    assert any(m.startswith("mindpet.") for m in _module_names(model))


def test_core_never_imports_mindformers(tmp_path):
    """pet / integrations import and apply LoRA to a plain network without loading mindformers."""
    code = ("import sys, mindspore as ms; ms.set_device('CPU'); from mindspore import nn\n"
            "from mindpet_lite.pet import get_pet_model\n"
            "from mindpet_lite.integrations import use_mindpet_lite, is_available\n"
            "class N(nn.Cell):\n"
            "    def __init__(self):\n"
            "        super().__init__(); self.wq = nn.Dense(4, 4)\n"
            "get_pet_model(N(), {'target_modules': 'wq'}); is_available()\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in ('mindformers', 'mindpet')]\n")
    env = {**os.environ, "PYTHONPATH": REPO}
    result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True,
                            text=True, timeout=600, check=False)  # a ceiling: 10x and more the idle time
    assert result.returncode == 0, result.stderr[-2000:]


def test_build_model_from_a_run_yaml_block(mf):
    """The runner's Ascend path builds MindFormers' own model by registry name (construction only)."""
    block = {"type": "LlamaConfig", "num_layers": NUM_LAYERS, "hidden_size": 32, "num_heads": 4,
             "n_kv_heads": 2, "vocab_size": 64, "seq_length": 16, "intermediate_size": 48,
             "compute_dtype": "float32", "param_init_type": "float32", "use_flash_attention": False,
             "pet_config": PET}
    net = mf_integration.build_model(block, "LlamaForCausalLM")
    assert isinstance(net, mf.LlamaForCausalLM)
    net = get_pet_model(net, PET)
    assert net.pet_summary["num_replaced"] == 4 * NUM_LAYERS
    with pytest.raises(ValueError, match="model.arch.type"):
        mf_integration.build_model(block, "NoSuchForCausalLM")
    with pytest.raises(ValueError, match="model.model_config.type"):
        mf_integration.build_model({**block, "type": "NoSuchConfig"}, "LlamaForCausalLM")
