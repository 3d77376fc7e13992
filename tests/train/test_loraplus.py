"""LoRA+ (pet_config.loraplus_lr_ratio): the B factors and 1-D trainables take ratio x the lr table in an
optimizer group of their own; checked against the numpy lr formula and a numpy AdamWeightDecay step."""
import numpy as np
import pytest
from mindspore import Tensor

from mindpet_lite.pet import get_pet_model
from mindpet_lite.train import Trainer, build_optimizer
from mindpet_lite.train.run_config import LrScheduleConfig, OptimizerConfig, WrapperConfig
from mindpet_lite.train.schedule import lr_values
from tests.adapters.conftest import tiny_llama
from tests.reference import lr_schedule

RATIO = 16.0
TOTAL = 20


def lora_plus_net():
    net = tiny_llama(lora=False)
    get_pet_model(net, dict(lora_rank=4, lora_alpha=8, lora_dropout=0.0, target_modules=".*wq|.*wv",
                            modules_to_save=["lm_head", "norm_out"], loraplus_lr_ratio=RATIO))
    return net


def fast(param):
    """PEFT's LoRA+ rule, written out: B factors and 1-D parameters take the ratio."""
    return param.name.endswith("mindpet_delta_lora_b") or len(param.shape) == 1


def schedule():
    return LrScheduleConfig(type="cosine", learning_rate=1e-3, warmup_ratio=0.1, lr_end=1e-5)


def adamw_first_step(p, g, lr, cfg):
    """numpy AdamWeightDecay update from zero moments (MindSpore's form: no bias correction)."""
    m = (1 - cfg.beta1) * g
    v = (1 - cfg.beta2) * g * g
    return p - lr * (m / (np.sqrt(v) + cfg.eps) + cfg.weight_decay * p)


def test_groups_carry_ratio_times_the_cosine_table():
    net = lora_plus_net()
    params = net.trainable_params()
    opt = build_optimizer(params, OptimizerConfig(), lr_values(schedule(), TOTAL), RATIO)
    table = lr_schedule("cosine", 1e-3, TOTAL, int(0.1 * TOTAL), 1e-5)
    assert opt.is_group_lr
    kinds = {"B": 0, "A": 0, "1-D": 0, "2-D full": 0}
    for p in params:
        lr = opt.get_lr_parameter([p])[0].asnumpy()
        want = table * (RATIO if fast(p) else 1.0)
        np.testing.assert_allclose(lr, want, rtol=1e-6)
        kinds["B" if "lora_b" in p.name else "A" if "lora_a" in p.name else "1-D" if len(p.shape) == 1
              else "2-D full"] += 1
    assert kinds == {"B": 4, "A": 4, "1-D": 1, "2-D full": 1}  # wq, wv x 2 layers; norm_out; lm_head


def test_one_step_moves_b_with_ratio_times_a_lr():
    net = lora_plus_net()
    params = net.trainable_params()
    cfg = OptimizerConfig()
    table = lr_values(schedule(), TOTAL)
    opt = build_optimizer(params, cfg, table, RATIO)
    rng = np.random.default_rng(0)
    for p in params:
        p.set_data(Tensor(rng.standard_normal(p.shape).astype(np.float32) * 0.1))
    before = [p.asnumpy().copy() for p in opt.parameters]
    grads = [rng.standard_normal(p.shape).astype(np.float32) for p in opt.parameters]
    opt(tuple(Tensor(g) for g in grads))
    lr1 = float(lr_schedule("cosine", 1e-3, TOTAL, int(0.1 * TOTAL), 1e-5)[0])  # update 1
    for p, p0, g in zip(opt.parameters, before, grads):
        want = adamw_first_step(p0.astype(np.float64), g.astype(np.float64), lr1 * (RATIO if fast(p) else 1.0), cfg)
        # the step itself (the update, not the weight it lands on) to float32 rounding
        np.testing.assert_allclose(p.asnumpy() - p0, want - p0, rtol=1e-3, atol=1e-9, err_msg=p.name)


def test_trainer_reads_the_ratio_from_the_pet_config():
    net = lora_plus_net()
    trainer = Trainer(net, OptimizerConfig(), schedule(), WrapperConfig(), TOTAL)
    b = [p for p in trainer.optimizer.parameters if p.name.endswith("lora_b")][0]
    a = [p for p in trainer.optimizer.parameters if p.name.endswith("lora_a")][0]
    lr_a = trainer.optimizer.get_lr_parameter([a])[0].asnumpy()
    lr_b = trainer.optimizer.get_lr_parameter([b])[0].asnumpy()
    np.testing.assert_allclose(lr_b, RATIO * lr_a, rtol=1e-6)
    np.testing.assert_allclose(lr_a, lr_schedule("cosine", 1e-3, TOTAL, int(0.1 * TOTAL), 1e-5), rtol=1e-6)


def test_without_ratio_one_group():
    net = tiny_llama(lora=False)
    get_pet_model(net, dict(target_modules=".*wq"))
    trainer = Trainer(net, OptimizerConfig(), schedule(), WrapperConfig(), TOTAL)
    assert not trainer.optimizer.is_group_lr


@pytest.mark.parametrize("bad, exc", [(0, ValueError), (float("nan"), ValueError), ("4", TypeError)])
def test_bad_ratio_in_build_optimizer(bad, exc):
    net = tiny_llama(lora=False)
    get_pet_model(net, dict(target_modules=".*wq"))
    with pytest.raises(exc, match="loraplus_lr_ratio"):
        build_optimizer(net.trainable_params(), OptimizerConfig(), lr_values(schedule(), TOTAL), bad)


def test_graph_mode_train_step_moves_b_ratio_times_further():
    """One compiled train step from B = 0 (A gets no gradient then), with and without LoRA+: the same
    gradients, so B's first Adam update is RATIO times larger, element by element."""
    import mindspore as ms
    ids = np.random.default_rng(0).integers(0, 128, (2, 13)).astype(np.int32)
    tokens = Tensor(float(2 * 12), ms.float32)
    moved = {}
    for ratio in (None, RATIO):
        net = tiny_llama(lora=False)
        get_pet_model(net, dict(lora_rank=4, lora_alpha=8, lora_dropout=0.0, target_modules=".*wq",
                                loraplus_lr_ratio=ratio))
        trainer = Trainer(net, OptimizerConfig(), schedule(), WrapperConfig(), TOTAL)
        trainer.step_cell(Tensor(ids), Tensor(ids), tokens, tokens)
        moved[ratio] = net.model.layers[0].attention.wq.mindpet_delta_lora_b.asnumpy()
    assert np.abs(moved[None]).max() > 0
    np.testing.assert_allclose(moved[RATIO], RATIO * moved[None], rtol=1e-5, atol=1e-12)
