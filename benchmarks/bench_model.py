"""Model benchmark: the built-in Llama, LoRA training step vs full fine-tune step.

Run (from anywhere; ~12 min with the defaults):

    python benchmarks/bench_model.py                    # tiny + larger (+ xl in the memory part)
    python benchmarks/bench_model.py --sizes tiny       # tiny only
    python benchmarks/bench_model.py --step trainer     # only the project's TrainStep (default: both)
    python benchmarks/bench_model.py --mem-sizes larger --mem-recompute off   # a quicker memory part
    python benchmarks/bench_model.py --dora --step trainer   # only DoRA and PiSSA steps next to LoRA's

Two parts:

1. Step time, side by side: one process builds the LoRA and the full network of one size with each
   step cell, compiles them all, then alternates their steps (rotating order) and reports medians
   after warm-up, tokens/s and the median of per-round LoRA/full ratios (wall clock and CPU time).
2. Memory and compile time, one process per (size, recompute, mode): peak RSS (ru_maxrss) after
   `--mem-steps` steps, the RSS after importing MindSpore and the toolkit, after building the network
   and optimizer, and the time of the first step (graph compile + one step) minus a steady step. Sizes:
   tiny, larger and xl (0.54B parameters, batch 1); with and without recompute_config.recompute.

Step = loss, gradients of the trainable parameters, AdamWeightDecay update (GRAPH_MODE, float32, CPU,
2 threads). Step cells: `ref` = nn.TrainOneStepCell (stock MindSpore); `trainer` = the project's
mindpet_lite.train.step.TrainStep with build_optimizer, as the demo config runs it (loss scale 1,
global-norm clipping at 1.0). LoRA: `mindpet_lite.pet.get_pet_model`, r=8, alpha=16, target_modules
'.*wq|.*wk|.*wv|.*wo'. Full: every parameter trainable. Random init, random tokens; the data rows hold
seq+1 tokens (MindFormers' convention), so each step reads batch x seq tokens.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  pylint: disable=wrong-import-position

SIZES = {
    # the tiny Llama
    "tiny": dict(hidden_size=512, num_layers=4, num_heads=8, intermediate_size=1376, vocab_size=4096,
                 seq_length=256, batch_size=4),
    # larger: ~4x the parameters (dominated by the blocks, not the embeddings)
    "larger": dict(hidden_size=1024, num_layers=6, num_heads=16, intermediate_size=2752, vocab_size=8192,
                   seq_length=256, batch_size=4),
    # memory part only (--mem-sizes): 0.54B parameters, where weights and optimizer state dominate the
    # fixed runtime and the activations, as they do for the 7B models LoRA is used on
    "xl": dict(hidden_size=2048, num_layers=8, num_heads=16, intermediate_size=5504, vocab_size=32000,
               seq_length=256, batch_size=1),
}
LORA = {"pet_type": "lora", "lora_rank": 8, "lora_alpha": 16, "lora_dropout": 0.0,
        "target_modules": ".*wq|.*wk|.*wv|.*wo"}
# --dora: the same LoRA with the layer-level variants of issue 15
VARIANTS = {"dora": {"use_dora": True}, "pissa": {"init_lora_weights": "pissa"}}


def build_step(size, mode, step_impl="ref", lr=1e-4, seed=0, recompute=False):
    """(step_cell, (input_ids, labels), summary) for one configuration."""
    # pylint: disable=import-outside-toplevel
    import mindspore as ms
    import numpy as np
    from mindspore import Tensor, nn
    from mindpet_lite.models.llama import LlamaConfig, LlamaForCausalLM

    ms.set_seed(seed)
    cfg = dict(SIZES[size])
    batch = cfg["batch_size"]
    net = LlamaForCausalLM(LlamaConfig(**cfg))
    if mode == "lora" or mode in VARIANTS:
        from mindpet_lite.pet import get_pet_model
        get_pet_model(net, dict(LORA, **VARIANTS.get(mode, {})))
    if recompute:  # recompute_config.recompute: True
        from mindpet_lite.models import recompute_layers
        recompute_layers(net)
    params = net.trainable_params()
    n_train = sum(int(np.prod(p.shape)) for p in params)
    n_total = sum(int(np.prod(p.shape)) for p in net.get_parameters())
    if step_impl in ("trainer", "trainer-noclip"):
        import mindpet_lite.train as T
        step = _trainer_step(T, net, params, lr, clip=step_impl == "trainer")
    else:
        opt = nn.AdamWeightDecay(params, learning_rate=lr, weight_decay=0.0)
        step = nn.TrainOneStepCell(net, opt)
    step.set_train(True)
    rng = np.random.default_rng(seed)
    ids = Tensor(rng.integers(1, cfg["vocab_size"], (batch, cfg["seq_length"] + 1)).astype(np.int32))
    return step, (ids, ids), {"trainable": n_train, "total": n_total, "tokens": batch * cfg["seq_length"]}


def _trainer_step(T, net, params, lr, clip=True):
    """The project's TrainStep and optimizer, set up as the demo config runs them (AdamWeightDecay,
    loss scale 1, global-norm clipping at 1.0: runner_wrapper.use_clip_grad / max_grad_norm)."""
    from types import SimpleNamespace  # pylint: disable=import-outside-toplevel
    opt_cfg = SimpleNamespace(type="AdamWeightDecay", beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
    opt = T.build_optimizer(params, opt_cfg, [lr] * 1000)
    return T.TrainStep(net, opt, clip_norm=1.0 if clip else None)


def child(args):
    """One (size, mode) in this process: compile time, steady step, peak RSS."""
    C.setup(args.threads)
    import mindpet_lite.models.llama  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    import mindpet_lite.pet  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    rss0 = C.peak_rss_mb()  # MindSpore and the toolkit, imported
    step, batch, info = build_step(args.size, args.mode, args.step.split(",")[0], recompute=args.recompute)
    rss_built = C.peak_rss_mb()
    t0 = time.perf_counter()
    loss = step(*batch)
    first = time.perf_counter() - t0
    times = []
    for _ in range(args.mem_steps):
        t0 = time.perf_counter()
        loss = step(*batch)
        times.append(time.perf_counter() - t0)
    steady = C.med(times)
    C.emit({"size": args.size, "mode": args.mode, "recompute": args.recompute, "rss_runtime_mb": rss0, "rss_built_mb": rss_built,
            "peak_rss_mb": C.peak_rss_mb(), "first_step_s": first, "compile_s": first - steady,
            "steady_step_s": steady, "loss": float(loss.asnumpy()), **info})


def side_by_side(size, reps, step_impls, threads, modes=("full", "lora")):
    """Part 1 for one size, in this process: {step_impl}-{mode} cells, interleaved."""
    C.setup(threads)
    cells = {}
    for impl in step_impls:
        for mode in modes:
            step, batch, info = build_step(size, mode, impl)
            step(*batch)  # compile
            cells[f"{impl}-{mode}"] = (step, batch, info)
    fns = {key: (lambda s=s, b=b: s(*b)) for key, (s, b, _) in cells.items()}
    wall, cpu = C.interleaved(fns, reps=reps, warmup=2)
    return wall, cpu, {key: i for key, (_, _, i) in cells.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="tiny,larger")
    parser.add_argument("--step", default="ref,trainer",
                        help="step cells, comma-separated: ref = nn.TrainOneStepCell + nn.AdamWeightDecay; "
                             "trainer = mindpet_lite.train.step.TrainStep (clip 1.0) + build_optimizer; "
                             "trainer-noclip = the same without clipping")
    parser.add_argument("--mem-step", default="trainer", help="step cells of the memory / compile runs")
    parser.add_argument("--mem-sizes", default="",
                        help="sizes of the memory / compile runs (default: --sizes plus xl, 0.54B parameters)")
    parser.add_argument("--mem-recompute", default="off,on",
                        help="memory runs without / with recompute_config.recompute (decoder layers recomputed)")
    parser.add_argument("--reps", type=int, default=0, help="interleaved rounds (default: 12 tiny, 5 larger)")
    parser.add_argument("--mem-steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--dora", action="store_true",
                        help="only the variants' part: LoRA, DoRA (use_dora) and PiSSA steps side by side")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--side", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--size", default="tiny", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="lora", help=argparse.SUPPRESS)
    parser.add_argument("--recompute", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    C.print_header(__file__)
    if args.side:
        reps = args.reps or (12 if args.size == "tiny" else 5)
        modes = ("lora", *VARIANTS) if args.dora else ("full", "lora")
        wall, cpu, info = side_by_side(args.size, reps, args.step.split(","), args.threads, modes)
        return C.emit({"wall": wall, "cpu": cpu, "info": info, "reps": reps})
    if args.child:
        return child(args)
    if args.dora:
        return variants(args)

    sizes = args.sizes.split(",")
    impls = args.step.split(",")
    me = os.path.abspath(__file__)
    print(f"built-in Llama, GRAPH_MODE, CPU, {args.threads} threads, float32; step cells: {', '.join(impls)}")
    rows, trows, reps_used = [], [], {}
    for size in sizes:
        res = C.run_child(me, ["--side", "--size", size, "--reps", args.reps, "--step", args.step,
                               "--threads", args.threads])
        wall, cpu, info = res["wall"], res["cpu"], res["info"]
        reps_used[size] = res["reps"]
        for impl in impls:
            full, lora = f"{impl}-full", f"{impl}-lora"
            rw, w1, w3 = C.ratio_stats(wall[lora], wall[full])
            rc, c1, c3 = C.ratio_stats(cpu[lora], cpu[full])
            for key in (full, lora):
                i = info[key]
                rows.append([size, impl, key.rsplit("-", 1)[1], f"{i['trainable']:,}",
                             f"{100 * i['trainable'] / i['total']:.2f}%", C.med(wall[key]) * 1e3,
                             i["tokens"] / C.med(wall[key]),
                             f"{rw:.3f} [{w1:.3f}, {w3:.3f}]" if key == lora else "",
                             f"{rc:.3f} [{c1:.3f}, {c3:.3f}]" if key == lora else ""])
            trows.append([size, impl, "LoRA step / full step <= 0.70", f"{rw:.3f}", f"{rc:.3f}",
                          "met" if max(rw, rc) <= 0.70 else ("met (one clock)" if min(rw, rc) <= 0.70 else "NOT met")])
        for other in impls[1:]:
            for mode in ("full", "lora"):
                a, b = f"{other}-{mode}", f"{impls[0]}-{mode}"
                rw = C.ratio_stats(wall[a], wall[b])[0]
                rc = C.ratio_stats(cpu[a], cpu[b])[0]
                rows.append([size, f"{other} / {impls[0]}", mode, "", "", "", "", f"{rw:.3f} (step time)",
                             f"{rc:.3f}"])
    print("\n### Step time, side by side in one process (interleaved rounds: "
          + ", ".join(f"{k} {v}" for k, v in reps_used.items()) + "; medians)\n")
    print(C.table(["size", "step", "mode", "trainable", "of total", "step ms", "tokens/s", "LoRA/full wall [IQR]",
                   "LoRA/full CPU [IQR]"], rows))

    mem = {}
    mem_impls = args.mem_step.split(",")
    mem_sizes = args.mem_sizes.split(",") if args.mem_sizes else sizes + ["xl"]
    recomputes = [r == "on" for r in args.mem_recompute.split(",")]
    for impl in mem_impls:
        for size in mem_sizes:
            for rc in recomputes:
                for mode in ("full", "lora"):
                    mem[(impl, size, rc, mode)] = C.run_child(
                        me, ["--child", "--size", size, "--mode", mode, "--mem-steps", args.mem_steps, "--step", impl,
                             "--threads", args.threads] + (["--recompute"] if rc else []))
    mrows = []
    for impl in mem_impls:
        for size in mem_sizes:
            for rc in recomputes:
                full = mem[(impl, size, rc, "full")]
                for mode in ("full", "lora"):
                    m = mem[(impl, size, rc, mode)]
                    mrows.append([size, impl, "on" if rc else "off", mode, f"{m['total']:,}", m["rss_runtime_mb"],
                                  m["rss_built_mb"], m["peak_rss_mb"], m["peak_rss_mb"] - m["rss_runtime_mb"],
                                  m["compile_s"], m["steady_step_s"] * 1e3,
                                  f"{m['peak_rss_mb'] / full['peak_rss_mb']:.3f}" if mode == "lora" else ""])
                ratio = mem[(impl, size, rc, "lora")]["peak_rss_mb"] / full["peak_rss_mb"]
                if size in ("larger", "xl"):
                    trows.append([size, f"{impl}, recompute {'on' if rc else 'off'}", "LoRA peak RSS / full <= 0.60",
                                  f"{ratio:.3f}", "", "met" if ratio <= 0.6 else "NOT met"])
    print("\n### Memory and compile time, one process per run\n")
    print(C.table(["size", "step", "recompute", "mode", "parameters", "RSS after imports MB", "RSS built MB", "peak RSS MB",
                   "peak - imports MB", "compile s", "steady step ms", "LoRA/full peak RSS"], mrows))
    print("\n### Targets\n")
    print(C.table(["size", "step", "target", "wall", "CPU", ""], trows))
    return None


def variants(args):
    """DoRA and PiSSA steps over the LoRA step, side by side in one process per size."""
    me = os.path.abspath(__file__)
    impls = args.step.split(",")
    print(f"built-in Llama, GRAPH_MODE, CPU, {args.threads} threads, float32; LoRA r=8 on wq/wk/wv/wo; "
          f"variants: {VARIANTS}")
    rows = []
    for size in args.sizes.split(","):
        res = C.run_child(me, ["--side", "--dora", "--size", size, "--reps", args.reps, "--step", args.step,
                               "--threads", args.threads])
        wall, cpu, info = res["wall"], res["cpu"], res["info"]
        for impl in impls:
            base = f"{impl}-lora"
            rows.append([size, impl, "lora", f"{info[base]['trainable']:,}", C.med(wall[base]) * 1e3, "", "",
                         res["reps"]])
            for mode in VARIANTS:
                key = f"{impl}-{mode}"
                rw, w1, w3 = C.ratio_stats(wall[key], wall[base])
                rc, c1, c3 = C.ratio_stats(cpu[key], cpu[base])
                rows.append([size, impl, mode, f"{info[key]['trainable']:,}", C.med(wall[key]) * 1e3,
                             f"{rw:.3f} [{w1:.3f}, {w3:.3f}]", f"{rc:.3f} [{c1:.3f}, {c3:.3f}]", res["reps"]])
    print("\n### Variant step / LoRA step, side by side in one process (median of per-round ratios [IQR])\n")
    print(C.table(["size", "step", "mode", "trainable", "step ms", "/ LoRA wall [IQR]", "/ LoRA CPU [IQR]", "rounds"],
                  rows))


if __name__ == "__main__":
    main()
