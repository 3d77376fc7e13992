"""The interop bar for the PEFT variant keys: per-layer ranks / alphas (rank_pattern, alpha_pattern),
layers_to_transform and modules_to_save. Trained in mindpet_lite -> exported -> the same logits in
transformers + PEFT; made by peft.get_peft_model -> imported -> the same logits in mindpet_lite (float32,
max abs diff <= 1e-4). The merged checkpoint and a reloaded adapter give the same logits too."""
import json

import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from mindpet_lite._files import read_checkpoint  # noqa: E402
from mindpet_lite.adapters import (export_peft, hf_to_mindspore, import_peft, load_adapter,  # noqa: E402
                                   merge_weights, mindspore_to_hf, pet_config_from_metadata, save_adapter)
from mindpet_lite.adapters.convert import hf_config_to_llama  # noqa: E402
from mindpet_lite.graph.freeze import lora_cells  # noqa: E402
from mindpet_lite.pet import get_pet_model  # noqa: E402
from tests.adapters.conftest import ALL_TARGETS, TINY_LLAMA, numpy_params, randomize_peft_adapter, tiny_llama  # noqa: E402

TOL = 1e-4
HF_ALL = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]

OURS = {
    "patterns": dict(target_modules=ALL_TARGETS, rank_pattern={"wq": 2, r"layers\.1\.feed_forward\.w2": 6},
                     alpha_pattern={"wv": 3, r"layers\.0\.attention\.wo": 20}),
    "layers": dict(target_modules=".*wq|.*wv|.*w2", layers_to_transform=[1]),
    "modules_to_save": dict(target_modules=".*wq|.*wv", modules_to_save=["lm_head", "norm_out"]),
    "mixed": dict(target_modules=".*wq|.*wk|.*w1", rank_pattern={"wk": 8}, alpha_pattern={"w1": 2},
                  layers_to_transform=0, modules_to_save=["lm_head"], use_rslora=True, loraplus_lr_ratio=4.0),
}
PEFTS = {
    "patterns": dict(target_modules=HF_ALL, rank_pattern={"q_proj": 2, "layers.1.mlp.down_proj": 6},
                     alpha_pattern={"v_proj": 3, r"model\.layers\.0\.self_attn\.o_proj": 20}),
    "layers": dict(target_modules=["q_proj", "v_proj", "down_proj"], layers_to_transform=[1]),
    "layers_pattern": dict(target_modules=["k_proj", "up_proj"], layers_to_transform=0, layers_pattern="layers",
                           rank_pattern={"up_proj": 8}),
    "modules_to_save": dict(target_modules=["q_proj", "v_proj"], modules_to_save=["lm_head", "model.norm"]),
}


@pytest.fixture(autouse=True)
def _torch_threads_and_pynative():
    """2 torch threads; PyNative for the training steps whatever mode an earlier test left set."""
    torch.set_num_threads(2)
    torch.manual_seed(0)
    before = ms.get_context("mode")
    ms.set_context(mode=ms.PYNATIVE_MODE)
    yield
    ms.set_context(mode=before)


def token_ids(seed, shape=(2, 12)):
    return np.random.default_rng(seed).integers(0, 128, shape).astype(np.int32)


def torch_logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()


def max_diff(a, b):
    return float(np.abs(a - b).max())


def plain_llama(base, seed=0, **overrides):
    """A LoRA-free built-in Llama holding the weights of ``base``."""
    net = tiny_llama(seed=seed, lora=False, **overrides)
    for name, p in net.parameters_and_names():
        p.set_data(Tensor(base[name]))
    return net


def adam_steps(net, steps=4, lr=1e-2):
    """A few Adam steps on everything trainable (the LoRA factors and any modules_to_save)."""
    params = net.trainable_params()
    opt = ms.nn.Adam(params, learning_rate=lr)
    grad_fn = ms.value_and_grad(lambda x: net(x, x), None, params)
    data = Tensor(token_ids(3, (4, 13)))
    losses = []
    for _ in range(steps):
        loss, grads = grad_fn(data)
        opt(grads)
        losses.append(float(loss))
    return losses


@pytest.mark.parametrize("kind", sorted(OURS))
def test_mindpet_trained_variant_runs_in_peft(tmp_path, kind):
    net = tiny_llama(seed=0, lora=False)
    base = {k: v.copy() for k, v in numpy_params(net).items()}  # before training (asnumpy may share memory)
    get_pet_model(net, dict(lora_rank=4, lora_alpha=8, lora_dropout=0.0, **OURS[kind]))
    losses = adam_steps(net)
    assert losses[-1] < losses[0]
    assert all(np.abs(c.mindpet_delta_lora_b.asnumpy()).max() > 0 for c in lora_cells(net).values())
    ids = token_ids(0)
    ms_logits = net(Tensor(ids)).asnumpy()

    adapter = str(tmp_path / "adapter.safetensors")
    meta = save_adapter(net, adapter)
    config = export_peft(adapter, str(tmp_path / "peft"))
    mindspore_to_hf(base, str(tmp_path / "hf"), config=net.config)
    hf = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)
    model = peft.PeftModel.from_pretrained(hf, str(tmp_path / "peft"))
    peft_diff = max_diff(torch_logits(model, ids), ms_logits)
    effect = max_diff(ms_logits, plain_llama(base)(Tensor(ids)).asnumpy())

    # PEFT built LoRA exactly where mindpet_lite has it, with the same ranks
    peft_ranks = {n[len("base_model.model."):-len(".lora_A.default.weight")]: p.shape[0]
                  for n, p in model.named_parameters() if n.endswith("lora_A.default.weight")}
    ours = {c: cell.lora_rank for c, cell in lora_cells(net).items()}
    assert len(peft_ranks) == len(ours) and sorted(peft_ranks.values()) == sorted(ours.values())
    assert "loraplus_lr_ratio" not in config  # training only

    # the merged checkpoint (per-layer scaling, modules_to_save written in) and a reloaded adapter
    merged_diff = max_diff(plain_llama(merge_weights(base, adapter))(Tensor(ids)).asnumpy(), ms_logits)
    again = tiny_llama(seed=5, lora=False)
    get_pet_model(again, pet_config_from_metadata(meta))
    for name, p in again.parameters_and_names():
        if name in base:
            p.set_data(Tensor(base[name]))
    load_adapter(again, adapter)
    reload_diff = max_diff(again(Tensor(ids)).asnumpy(), ms_logits)
    print(f"\n{kind}: mindpet_lite -> PEFT logits diff {peft_diff:.2e}, merged {merged_diff:.2e}, reloaded "
          f"{reload_diff:.2e} (the adapter moves logits by {effect:.3f})")
    assert peft_diff <= TOL and merged_diff <= TOL and reload_diff <= TOL
    assert effect > 100 * TOL
    if kind == "patterns":
        assert config["rank_pattern"] == {f"model.layers.{i}.self_attn.q_proj": 2 for i in range(2)} | {
            "model.layers.1.mlp.down_proj": 6}
        assert config["alpha_pattern"] == {"model.layers.0.self_attn.v_proj": 3, "model.layers.1.self_attn.v_proj": 3,
                                           "model.layers.0.self_attn.o_proj": 20}
    if kind == "layers":
        assert config["layers_to_transform"] == [1] and set(peft_ranks) == {
            "model.layers.1.self_attn.q_proj", "model.layers.1.self_attn.v_proj", "model.layers.1.mlp.down_proj"}
    if kind == "modules_to_save":
        assert sorted(config["modules_to_save"]) == ["lm_head", "model.norm"]
        assert sorted(meta["pet_config"]["modules_to_save"]) == ["lm_head", "norm_out"]
        with open(tmp_path / "peft" / "adapter_config.json", encoding="utf-8") as f:
            assert json.load(f)["modules_to_save"] == config["modules_to_save"]
        trained = net.lm_head.weight.asnumpy()
        assert max_diff(trained, base["lm_head.weight"]) > 0  # trained in full


@pytest.mark.parametrize("kind", sorted(PEFTS))
def test_peft_made_variant_runs_in_mindpet(tmp_path, kind):
    hf_config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                         max_position_embeddings=16, rms_norm_eps=1e-6, tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(hf_config)
    hf.save_pretrained(str(tmp_path / "hf"), safe_serialization=True)
    lora_config = peft.LoraConfig(r=4, lora_alpha=8, lora_dropout=0.0, init_lora_weights=False, task_type="CAUSAL_LM",
                                  **PEFTS[kind])
    model = peft.get_peft_model(hf, lora_config)
    randomize_peft_adapter(model, saved_noise=0.05)  # random non-zero B, changed modules_to_save copies
    model.save_pretrained(str(tmp_path / "peft"))
    ids = token_ids(1)
    peft_logits = torch_logits(model, ids)

    hf_to_mindspore(str(tmp_path / "hf"), str(tmp_path / "base.ckpt"))
    base, _ = read_checkpoint(str(tmp_path / "base.ckpt"))
    _, meta = import_peft(str(tmp_path / "peft"), str(tmp_path / "imported.ckpt"))
    overrides = {k: v for k, v in hf_config_to_llama(hf_config.to_dict()).items()
                 if k in TINY_LLAMA and k != "pad_token_id"}
    net = tiny_llama(seed=1, lora=False, **overrides)
    get_pet_model(net, pet_config_from_metadata(meta))  # the imported config describes the adapter
    for name, p in net.parameters_and_names():
        if name in base:
            p.set_data(Tensor(base[name]))
    load_adapter(net, str(tmp_path / "imported.ckpt"))
    diff = max_diff(net(Tensor(ids)).asnumpy(), peft_logits)
    with model.disable_adapter():
        effect = max_diff(torch_logits(model, ids), peft_logits)
    merged_diff = max_diff(plain_llama(merge_weights(base, str(tmp_path / "imported.ckpt")), **overrides)(
        Tensor(ids)).asnumpy(), peft_logits)
    print(f"\nPEFT {kind} -> mindpet_lite: logits diff {diff:.2e}, merged {merged_diff:.2e} "
          f"(the adapter moves logits by {effect:.3f})")
    assert diff <= TOL and merged_diff <= TOL
    assert effect > 100 * TOL
    cells = lora_cells(net)
    if kind == "patterns":
        assert {c: cells[c].lora_rank for c in cells if cells[c].lora_rank != 4} == {
            "model.layers.0.attention.wq": 2, "model.layers.1.attention.wq": 2, "model.layers.1.feed_forward.w2": 6}
        assert cells["model.layers.0.attention.wo"].scaling == pytest.approx(20 / 4)
        assert cells["model.layers.1.attention.wv"].scaling == pytest.approx(3 / 4)
    if kind == "layers":
        assert sorted(cells) == ["model.layers.1.attention.wq", "model.layers.1.attention.wv",
                                 "model.layers.1.feed_forward.w2"]
    if kind == "layers_pattern":
        assert {c: cells[c].lora_rank for c in cells} == {"model.layers.0.attention.wk": 4,
                                                          "model.layers.0.feed_forward.w3": 8}
    if kind == "modules_to_save":
        assert sorted(meta["pet_config"]["modules_to_save"]) == ["lm_head", "model.norm_out"]
