"""Method benchmark: the training step of each delta-tuning method against the LoRA step, on the same model.

Run (from anywhere; ~3 min on the demo size):

    python benchmarks/bench_methods.py                     # the demo's model (benchmarks/quality.py's task)
    python benchmarks/bench_methods.py --sizes demo,tiny --reps 20

One process builds, for a size, the same base Llama (seed 0) with each method: LoRA (r=8, alpha 16 on
wq/wk/wv/wo: bench_model.py's), Adapter (bottleneck 8 after wo and w2) and LowRankAdapter
(reduction_factor 8, low_rank_size 2, after wo and w2), as quality.py's rows, each with the project's
TrainStep and build_optimizer (AdamWeightDecay, clipping at 1.0); compiles them, then alternates their
steps (rotating order) and reports the median step and the median of per-round method/LoRA ratios with
the inter-quartile spread, wall clock and CPU time (GRAPH_MODE, float32, CPU).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  pylint: disable=wrong-import-position
import bench_model as B  # noqa: E402  pylint: disable=wrong-import-position

# the demo's model (configs/tiny_llama/tiny_llama_base.json) at the demo's batch
SIZES = dict(B.SIZES, demo=dict(hidden_size=128, num_layers=4, num_heads=4, intermediate_size=384, vocab_size=260,
                                seq_length=80, batch_size=32))
HOULSBY = ".*wo|.*w2"
METHODS = {"LoRA": B.LORA,
           "Adapter": {"pet_type": "adapter", "bottleneck_size": 8, "target_modules": HOULSBY},
           "LowRankAdapter": {"pet_type": "low_rank_adapter", "reduction_factor": 8, "low_rank_size": 2,
                              "target_modules": HOULSBY}}


def build(size, pet_config, lr=1e-4, seed=0):
    """(step cell, (input_ids, labels), trainable %) of a ``size`` Llama under ``pet_config``."""
    # pylint: disable=import-outside-toplevel
    import mindspore as ms
    import numpy as np
    from types import SimpleNamespace
    from mindspore import Tensor
    from mindpet_lite.models.llama import LlamaConfig, LlamaForCausalLM
    from mindpet_lite.pet import get_pet_model
    from mindpet_lite.train import TrainStep, build_optimizer

    ms.set_seed(seed)
    cfg = dict(SIZES[size])
    net = LlamaForCausalLM(LlamaConfig(**cfg))
    get_pet_model(net, pet_config)
    opt_cfg = SimpleNamespace(type="AdamWeightDecay", beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    step = TrainStep(net, build_optimizer(net.trainable_params(), opt_cfg, [lr] * 1000), clip_norm=1.0)
    step.set_train(True)
    rng = np.random.default_rng(seed)
    ids = Tensor(rng.integers(1, cfg["vocab_size"], (cfg["batch_size"], cfg["seq_length"] + 1)).astype(np.int32))
    return step, (ids, ids), net.pet_summary["percent"]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="demo")
    parser.add_argument("--reps", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    C.print_header(__file__)
    C.setup(args.threads)
    rows = []
    for size in args.sizes.split(","):
        cells = {name: build(size, config) for name, config in METHODS.items()}
        for step, batch, _ in cells.values():
            step(*batch)  # compile
        fns = {name: (lambda s=s, b=b: s(*b)) for name, (s, b, _) in cells.items()}
        wall, cpu = C.interleaved(fns, reps=args.reps, warmup=2)
        for name, (_, _, percent) in cells.items():
            for what, times in (("wall", wall), ("cpu", cpu)):
                ratio, q1, q3 = C.ratio_stats(times[name], times["LoRA"])
                rows.append([size, name, f"{percent:.2f}%", what, C.med(times[name]) * 1e3, ratio, f"{q1:.3f}-{q3:.3f}"])
    print(C.table(["size", "method", "trainable", "clock", "step ms", "method/LoRA", "IQR"], rows))


if __name__ == "__main__":
    main()
