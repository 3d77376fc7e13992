"""Prefix benchmark: the P-Tuning v2 / prefix tuning training step vs the LoRA step, side by side.

Run (from anywhere; ~3 min on the tiny size):

    python benchmarks/bench_prefix.py                    # tiny
    python benchmarks/bench_prefix.py --sizes tiny,larger --reps 20 --pre-seq-len 32

One process builds, for a size (bench_model.py's sizes), the LoRA network of bench_model.py (r=8,
alpha=16 on wq/wk/wv/wo) and the prefix networks (pet_type ptuning2 with pre_seq_len T, without and
with prefix_projection, projection_dim 128; pet_type prefixtuning, mid_dim 128), each with the project's
TrainStep and build_optimizer (AdamWeightDecay, clipping at 1.0). It compiles them, then alternates their
steps (rotating order) and reports medians and the median of per-round method/LoRA ratios with the
inter-quartile spread, wall clock and CPU time (GRAPH_MODE, float32, CPU), and the trainable share.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  pylint: disable=wrong-import-position
import bench_model as B  # noqa: E402  pylint: disable=wrong-import-position


def methods(pre_seq_len):
    """{name: pet_config} compared, LoRA first (the denominator)."""
    prefix = {"pre_seq_len": pre_seq_len, "dropout_prob": 0.0}
    return {"LoRA r=8": B.LORA,
            f"P-Tuning v2 T={pre_seq_len}": {"pet_type": "ptuning2", **prefix, "prefix_projection": False},
            f"P-Tuning v2 T={pre_seq_len} +MLP": {"pet_type": "ptuning2", **prefix, "prefix_projection": True,
                                                   "projection_dim": 128},
            f"prefixtuning T={pre_seq_len}": {"pet_type": "prefixtuning", "prefix_token_num": pre_seq_len,
                                               "mid_dim": 128, "dropout_rate": 0.0}}


def build(size, pet, lr=1e-4, seed=0):
    """(step cell, (input_ids, labels), trainable %) of ``size`` with ``pet`` applied."""
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
    net = get_pet_model(LlamaForCausalLM(LlamaConfig(**cfg)), pet)
    opt_cfg = SimpleNamespace(type="AdamWeightDecay", beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    opt = build_optimizer(net.trainable_params(), opt_cfg, [lr] * 1000)
    step = TrainStep(net, opt, clip_norm=1.0)
    step.set_train(True)
    rng = np.random.default_rng(seed)
    ids = Tensor(rng.integers(1, cfg["vocab_size"], (cfg["batch_size"], cfg["seq_length"] + 1)).astype(np.int32))
    return step, (ids, ids), net.pet_summary["percent"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--pre-seq-len", type=int, default=16)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    C.print_header(__file__)
    C.setup(args.threads)
    rows = []
    for size in args.sizes.split(","):
        built = {name: build(size, pet) for name, pet in methods(args.pre_seq_len).items()}
        for step, batch, _ in built.values():
            step(*batch)  # compile
        fns = {name: (lambda s=s, b=b: s(*b)) for name, (s, b, _) in built.items()}
        wall, cpu = C.interleaved(fns, reps=args.reps, warmup=2)
        lora = next(iter(built))
        for name, (_, _, percent) in built.items():
            row = [size, name, f"{percent:.3f}%"]
            for times in (wall, cpu):
                ratio, q1, q3 = C.ratio_stats(times[name], times[lora])
                row += [C.med(times[name]) * 1e3, ratio, f"{q1:.3f}-{q3:.3f}"]
            rows.append(row)
    print(C.table(["size", "method", "trainable", "wall ms", "vs LoRA (wall)", "IQR", "CPU ms", "vs LoRA (CPU)",
                   "IQR"], rows))


if __name__ == "__main__":
    main()
