"""The interop bar: MindSpore-trained LoRA -> PEFT on Hugging Face Llama, and PEFT-made LoRA -> MindSpore,
same logits (float32, max abs diff <= 1e-4). Nothing is downloaded: models are built from configs."""
import os

import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from mindpet_lite.adapters import (export_peft, hf_to_mindspore, import_peft, load_adapter,  # noqa: E402
                                   mindspore_to_hf, save_adapter)
from mindpet_lite.adapters.convert import hf_config_to_llama, llama_config_to_hf  # noqa: E402
from mindpet_lite.models.generation import generate  # noqa: E402
from tests.adapters.conftest import ALL_TARGETS, numpy_params, randomize, randomize_peft_adapter, tiny_llama  # noqa: E402

TOL = 1e-4


@pytest.fixture(autouse=True)
def _torch_threads():
    torch.set_num_threads(2)
    torch.manual_seed(0)


def _ids(seed=0, shape=(2, 12)):
    return np.random.default_rng(seed).integers(0, 128, shape).astype(np.int32)


def _hf_logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(torch.tensor(ids, dtype=torch.long)).logits.float().numpy()


def _train(net, steps=4, lr=1e-2):
    """A few Adam steps on the LoRA factors, so B != 0."""
    params = net.trainable_params()
    opt = ms.nn.Adam(params, learning_rate=lr)
    def loss_of(x):  # a def, not a lambda: MindSpore may stage it as a graph, and cannot parse inline lambdas
        return net(x, x)
    grad_fn = ms.value_and_grad(loss_of, None, params)
    data = Tensor(_ids(3, (4, 13)))
    losses = []
    for _ in range(steps):
        loss, grads = grad_fn(data)
        opt(grads)
        losses.append(float(loss))
    return losses


def _export_to_hf(net, tmp_path):
    """The net's adapter exported to PEFT (tmp_path/peft), its base converted to HF (tmp_path/hf) ->
    (base numpy params, the HF LlamaForCausalLM of the base, float32)."""
    adapter = str(tmp_path / "adapter.safetensors")
    save_adapter(net, adapter)
    export_peft(adapter, str(tmp_path / "peft"))
    base = {k: v for k, v in numpy_params(net).items() if "mindpet_delta_lora" not in k}
    mindspore_to_hf(base, str(tmp_path / "hf"), config=net.config)
    return base, transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf"), dtype=torch.float32)


def test_mindspore_lora_runs_in_peft(tmp_path):
    net = tiny_llama(seed=0, rank=4, alpha=8, targets=ALL_TARGETS)
    losses = _train(net)
    assert losses[-1] < losses[0]
    b = net.model.layers[0].attention.wq.mindpet_delta_lora_b.asnumpy()
    assert np.abs(b).max() > 0  # trained: the adapter changes the model
    ids = _ids()
    ms_logits = net(Tensor(ids)).asnumpy()

    base, hf = _export_to_hf(net, tmp_path)
    # the converted base alone: same logits as the MindSpore base (no q/k permutation needed)
    ms_base = tiny_llama(seed=0, lora=False)
    for name, p in ms_base.parameters_and_names():
        p.set_data(Tensor(base[name]))
    base_diff = float(np.abs(_hf_logits(hf, ids) - ms_base(Tensor(ids)).asnumpy()).max())
    model = peft.PeftModel.from_pretrained(hf, str(tmp_path / "peft"))
    peft_diff = float(np.abs(_hf_logits(model, ids) - ms_logits).max())
    effect = float(np.abs(ms_logits - ms_base(Tensor(ids)).asnumpy()).max())
    print(f"\nMindSpore LoRA -> PEFT: base logits diff {base_diff:.2e}, adapted logits diff {peft_diff:.2e} "
          f"(the adapter moves logits by {effect:.3f})")
    assert base_diff <= TOL
    assert peft_diff <= TOL
    assert effect > 100 * TOL


def test_peft_lora_runs_in_mindspore(tmp_path):
    hf_config = transformers.LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                         num_attention_heads=4, num_key_value_heads=2, vocab_size=128,
                                         max_position_embeddings=16, rms_norm_eps=1e-6, tie_word_embeddings=False)
    hf = transformers.LlamaForCausalLM(hf_config)
    # the base, saved by transformers itself, sharded (index json + several files)
    hf.save_pretrained(str(tmp_path / "hf"), safe_serialization=True, max_shard_size="60KB")
    assert os.path.isfile(tmp_path / "hf" / "model.safetensors.index.json")
    lora_config = peft.LoraConfig(r=4, lora_alpha=16, use_rslora=True, lora_dropout=0.0, init_lora_weights=False,
                                  target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                  "down_proj"], modules_to_save=["lm_head"], task_type="CAUSAL_LM")
    model = peft.get_peft_model(hf, lora_config)
    randomize_peft_adapter(model, saved_noise=0.01)  # random non-zero B everywhere, a changed lm_head copy
    model.save_pretrained(str(tmp_path / "peft"))
    ids = _ids(1)
    peft_logits = _hf_logits(model, ids)

    base_ckpt = str(tmp_path / "base.ckpt")
    hf_to_mindspore(str(tmp_path / "hf"), base_ckpt)
    model_config = hf_config_to_llama(hf_config.to_dict())
    tensors, meta = import_peft(str(tmp_path / "peft"), str(tmp_path / "imported.ckpt"))
    assert meta["pet_config"]["use_rslora"] and meta["scaling"] == pytest.approx(16 / 2.0)
    net = tiny_llama(seed=1, rank=4, alpha=16, rslora=True, targets=meta["pet_config"]["target_modules"],
                     **{k: v for k, v in model_config.items() if k not in ("pad_token_id",)})
    from mindpet_lite._files import read_checkpoint
    base, _ = read_checkpoint(base_ckpt)
    for name, p in net.parameters_and_names():
        if name in base:
            p.set_data(Tensor(base[name]))
    load_adapter(net, str(tmp_path / "imported.ckpt"))
    diff = float(np.abs(net(Tensor(ids)).asnumpy() - peft_logits).max())
    print(f"\nPEFT LoRA (rsLoRA, modules_to_save lm_head) -> MindSpore: logits diff {diff:.2e}")
    assert diff <= TOL
    assert llama_config_to_hf(net.config)["num_key_value_heads"] == 2


# prompts of different lengths (a batch HF pads on the left, mindpet_lite on the right)
GEN_PROMPTS = [[1, 17, 42, 99, 5, 63, 7], [1, 88, 3], [1, 120, 64, 31, 9]]
GEN_NEW = 8


def _hf_generate(model, prompts, new_tokens):
    """transformers' greedy generate on a left-padded batch -> each row's prompt + new tokens (pads removed)."""
    width = max(len(p) for p in prompts)
    ids = torch.zeros((len(prompts), width), dtype=torch.long)
    mask = torch.zeros((len(prompts), width), dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, width - len(p):] = torch.tensor(p)
        mask[b, width - len(p):] = 1
    model.eval()
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                             do_sample=False, pad_token_id=0)
    return [out[b, width - len(p):].tolist() for b, p in enumerate(prompts)]


def test_mindspore_lora_generates_the_same_greedy_tokens_in_peft(tmp_path):
    """Greedy generate (KV cache) of a padded batch of three prompt lengths: row by row the same tokens as
    transformers + PEFT generate (left-padded batch, and each prompt alone)."""
    net = randomize(tiny_llama(seed=0, rank=4, alpha=8, targets=ALL_TARGETS), seed=2, scale=0.1)
    ms_batch = generate(net, GEN_PROMPTS, GEN_NEW, do_sample=False, use_past=True)

    _, hf = _export_to_hf(net, tmp_path)
    hf.generation_config.eos_token_id = None  # no early stop: every row gets GEN_NEW tokens, as above
    model = peft.PeftModel.from_pretrained(hf, str(tmp_path / "peft"))
    hf_batch = _hf_generate(model, GEN_PROMPTS, GEN_NEW)
    for b, prompt in enumerate(GEN_PROMPTS):
        assert len(ms_batch[b]) == len(prompt) + GEN_NEW
        assert hf_batch[b] == ms_batch[b], f"row {b}: PEFT {hf_batch[b]} vs mindpet_lite {ms_batch[b]}"
        assert _hf_generate(model, [prompt], GEN_NEW)[0] == ms_batch[b]
    with model.disable_adapter():  # the adapter matters: the base alone continues differently
        base_tokens = _hf_generate(model, GEN_PROMPTS, GEN_NEW)
    assert base_tokens != hf_batch
