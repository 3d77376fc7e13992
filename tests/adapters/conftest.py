"""Small networks for the adapter tests: a hand-built two-layer LoRA net and a tiny built-in Llama."""
import numpy as np
import mindspore as ms
import pytest
from mindspore import Tensor, nn

from mindpet_lite.delta.lora import LoRADense

TINY_LLAMA = dict(hidden_size=64, num_layers=2, num_heads=4, n_kv_heads=2, vocab_size=128, seq_length=16,
                  intermediate_size=128, rms_norm_eps=1e-6)
ALL_TARGETS = ".*wq|.*wk|.*wv|.*wo|.*w1|.*w2|.*w3"


class Body(nn.Cell):
    def __init__(self, rank, alpha, rslora):
        super().__init__()
        self.fc1 = LoRADense(8, 6, rank, alpha, compute_dtype=ms.float32, use_rslora=rslora)
        self.fc2 = LoRADense(6, 4, rank, alpha, compute_dtype=ms.float32, use_rslora=rslora)

    def construct(self, x):
        return self.fc2(ops_tanh(self.fc1(x)))


def ops_tanh(x):
    return ms.ops.tanh(x)


class SmallNet(nn.Cell):
    """body.fc1 (LoRA 8->6), body.fc2 (LoRA 6->4), head (plain Dense 4->3, frozen)."""

    def __init__(self, rank=4, alpha=8, rslora=False):
        super().__init__()
        self.body = Body(rank, alpha, rslora)
        self.head = nn.Dense(4, 3)

    def construct(self, x):
        return self.head(self.body(x))


def randomize(net, seed=0, scale=0.3, names=("mindpet_delta_lora",)):
    """Give matching parameters random values (B != 0, so the adapter does something)."""
    rng = np.random.default_rng(seed)
    for name, p in net.parameters_and_names():
        if any(n in name for n in names):
            p.set_data(Tensor(rng.standard_normal(p.shape).astype(np.float32) * scale).astype(p.dtype))
    return net


def small_net(rank=4, alpha=8, rslora=False, seed=0):
    """A SmallNet with frozen base and random LoRA factors."""
    ms.set_seed(seed)
    net = SmallNet(rank, alpha, rslora)
    for name, p in net.parameters_and_names():
        p.requires_grad = "mindpet_delta_lora" in name
    return randomize(net, seed)


def tiny_llama(seed=0, lora=True, rank=4, alpha=8, targets=ALL_TARGETS, rslora=False, **overrides):
    """The built-in Llama (float32, hidden 64, 2 layers, 4 heads, 2 kv heads, vocab 128), with LoRA."""
    from mindpet_lite.models.llama import LlamaForCausalLM
    from mindpet_lite.pet.model import get_pet_model
    ms.set_seed(seed)
    net = LlamaForCausalLM(dict(TINY_LLAMA, **overrides))
    if lora:
        get_pet_model(net, dict(lora_rank=rank, lora_alpha=alpha, lora_dropout=0.0, target_modules=targets,
                                use_rslora=rslora))
    return net


def numpy_params(net):
    return {name: p.asnumpy() for name, p in net.parameters_and_names()}


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def randomize_peft_adapter(model, saved_noise=0.0, magnitude_spread=0.0):
    """A PEFT model made to look trained: every lora_B ~ N(0, 0.05) (PEFT starts B at zero), the
    modules_to_save copies moved by saved_noise·N(0, 1), DoRA magnitudes scaled by 1 + spread·U(0, 1)."""
    import torch  # pylint: disable=import-outside-toplevel  # optional: only the interop tests need it
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0.0, 0.05)
            if "modules_to_save" in name:
                param.add_(saved_noise * torch.randn_like(param))
            if "lora_magnitude_vector" in name:
                param.mul_(1.0 + magnitude_spread * torch.rand_like(param))
