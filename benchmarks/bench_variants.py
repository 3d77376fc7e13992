"""Variant benchmark: the LoRA+ training step (pet_config.loraplus_lr_ratio) vs the plain LoRA step.

Run (from anywhere; ~2 min on the tiny size):

    python benchmarks/bench_variants.py                  # tiny
    python benchmarks/bench_variants.py --sizes tiny,larger --reps 20

One process builds both networks of a size (bench_model.py's sizes and LoRA config: r=8, alpha=16 on
wq/wk/wv/wo) with the project's TrainStep and build_optimizer (AdamWeightDecay, clipping at 1.0), the
LoRA+ one with ratio 16 (B factors in an optimizer group of their own, with a 16x lr table), compiles
both, then alternates their steps (rotating order) and reports medians and the median of per-round
LoRA+/LoRA ratios with the inter-quartile spread, wall clock and CPU time (GRAPH_MODE, float32, CPU).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  pylint: disable=wrong-import-position
import bench_model as B  # noqa: E402  pylint: disable=wrong-import-position

RATIO = 16.0


def build(size, ratio, lr=1e-4, seed=0):
    """(step cell, (input_ids, labels)) of a LoRA network of ``size``; LoRA+ when ``ratio`` is given."""
    # pylint: disable=import-outside-toplevel
    import mindspore as ms
    import numpy as np
    from types import SimpleNamespace
    from mindspore import Tensor
    from mindpet_lite.models.llama import LlamaConfig, LlamaForCausalLM
    from mindpet_lite.pet import get_pet_model
    from mindpet_lite.train import TrainStep, build_optimizer

    ms.set_seed(seed)
    cfg = dict(B.SIZES[size])
    net = LlamaForCausalLM(LlamaConfig(**cfg))
    get_pet_model(net, dict(B.LORA, loraplus_lr_ratio=ratio))
    opt_cfg = SimpleNamespace(type="AdamWeightDecay", beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    opt = build_optimizer(net.trainable_params(), opt_cfg, [lr] * 1000, net.pet_config.loraplus_lr_ratio)
    step = TrainStep(net, opt, clip_norm=1.0)
    step.set_train(True)
    rng = np.random.default_rng(seed)
    ids = Tensor(rng.integers(1, cfg["vocab_size"], (cfg["batch_size"], cfg["seq_length"] + 1)).astype(np.int32))
    return step, (ids, ids)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    C.setup(args.threads)
    rows = []
    for size in args.sizes.split(","):
        cells = {"lora": build(size, None), "lora+": build(size, RATIO)}
        for step, batch in cells.values():
            step(*batch)  # compile
        fns = {name: (lambda s=s, b=b: s(*b)) for name, (s, b) in cells.items()}
        wall, cpu = C.interleaved(fns, reps=args.reps, warmup=2)
        for what, times in (("wall", wall), ("cpu", cpu)):
            ratio, q1, q3 = C.ratio_stats(times["lora+"], times["lora"])
            rows.append([size, what, C.med(times["lora"]) * 1e3, C.med(times["lora+"]) * 1e3, ratio, f"{q1:.3f}-{q3:.3f}"])
    print(C.table(["size", "clock", "LoRA step ms", "LoRA+ step ms", "LoRA+/LoRA", "IQR"], rows))


if __name__ == "__main__":
    main()
