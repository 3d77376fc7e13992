"""mindpet_lite vs PyTorch + PEFT: the same Llama, the same LoRA, the same batch and threads.

Run (from anywhere; ~4 min):

    python benchmarks/bench_torch.py                  # tiny Llama (hidden 512, 4 layers, seq 256, batch 4)
    python benchmarks/bench_torch.py --size larger    # the larger shape of bench_model.py
    python benchmarks/bench_torch.py --pairs 2        # fewer process pairs

Both sides: random init, LoRA r=8 alpha=16 dropout 0 on the four attention projections (mindpet_lite:
`get_pet_model`, target_modules '.*wq|.*wk|.*wv|.*wo'; PEFT: q_proj/k_proj/v_proj/o_proj), float32,
AdamW-family update of the LoRA factors only (nn.AdamWeightDecay / torch.optim.AdamW, weight decay 0),
one step = forward with loss, backward, global-norm clipping at 1.0 (the project's TrainStep as the
demo config runs it; torch.nn.utils.clip_grad_norm_; `--step ref`: nn.TrainOneStepCell and no
clipping on either side), update. Both read batch x seq tokens a step (the MindSpore data
rows hold seq+1 tokens, MindFormers' convention; Hugging Face shifts inside the model).

Threads: 2 for both. PyTorch: torch.set_num_threads(2) (intra-op) and OMP_NUM_THREADS=2. MindSpore
2.9: mindspore.device_context.cpu.op_tuning.threads_num(2) (the CPU kernel pool; the deprecated
spelling is set_context(runtime_num_threads=2)) and OMP_NUM_THREADS=2. transformers' default attention
(sdpa) is used, as a user would get it.

Two measurements:
1. Process pairs: `--pairs` times, one MindSpore process and one PyTorch process, in alternating
   order, each compiling / warming up then timing `--steps` steps; reports median step time, peak RSS
   (ru_maxrss) and the RSS after the framework imports; the ratio is the median of per-pair ratios.
2. One process holding both, steps interleaved (rotating order, medians after warm-up): the same ratio
   with the two sides exposed to the same moment-to-moment load.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  pylint: disable=wrong-import-position
from bench_model import SIZES  # noqa: E402  pylint: disable=wrong-import-position

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def torch_step(size, threads, clip=True, seed=0):
    # pylint: disable=import-outside-toplevel
    import torch
    import transformers
    from peft import LoraConfig, get_peft_model
    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    s = SIZES[size]
    cfg = transformers.LlamaConfig(
        vocab_size=s["vocab_size"], hidden_size=s["hidden_size"], intermediate_size=s["intermediate_size"],
        num_hidden_layers=s["num_layers"], num_attention_heads=s["num_heads"],
        num_key_value_heads=s["num_heads"], max_position_embeddings=s["seq_length"] + 1, rms_norm_eps=1e-5,
        tie_word_embeddings=False, use_cache=False)
    model = transformers.LlamaForCausalLM(cfg)
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, lora_dropout=0.0, bias="none",
                                             target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                             task_type="CAUSAL_LM"))
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, s["vocab_size"], (s["batch_size"], s["seq_length"]), generator=gen)

    def step():
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        if clip:  # as the project's TrainStep (runner_wrapper.use_clip_grad, max_grad_norm 1.0)
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss

    info = {"trainable": sum(p.numel() for p in params), "total": sum(p.numel() for p in model.parameters()),
            "attn": model.config._attn_implementation, "torch": torch.__version__,  # pylint: disable=protected-access
            "transformers": transformers.__version__}
    return step, info


def ms_step(size, step_impl="ref"):
    from bench_model import build_step  # pylint: disable=import-outside-toplevel
    step, batch, info = build_step(size, "lora", step_impl)
    return (lambda: step(*batch)), info


def child(args):
    # pylint: disable=import-outside-toplevel,unused-import
    if args.side == "ms":
        C.setup(args.threads)
        import mindpet_lite.models.llama
        import mindpet_lite.pet
    else:
        os.chdir(C.scratch_dir("mpl_bench_"))
        import peft
        import torch
        import transformers
    rss0 = C.peak_rss_mb()  # the framework, imported
    fn, info = ms_step(args.size, args.step) if args.side == "ms" else \
        torch_step(args.size, args.threads, clip=args.step == "trainer")
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    fn()
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    C.emit({"side": args.side, "rss_runtime_mb": rss0, "peak_rss_mb": C.peak_rss_mb(), "first_step_s": first,
            "step_s": C.med(times), "times": times, "trainable": info["trainable"], "total": info["total"],
            "attn": info.get("attn", "")})


def inproc(args):
    C.setup(args.threads)
    ms_fn, _ = ms_step(args.size, args.step)
    th_fn, _ = torch_step(args.size, args.threads, clip=args.step == "trainer")
    ms_fn()
    th_fn()
    wall, cpu = C.interleaved({"mindpet_lite": ms_fn, "torch+peft": th_fn}, reps=args.reps, warmup=2)
    C.emit({"wall": wall, "cpu": cpu})


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", choices=list(SIZES), default="tiny")
    parser.add_argument("--pairs", type=int, default=3)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--reps", type=int, default=10, help="interleaved rounds of the in-process run")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--step", choices=["ref", "trainer"], default="trainer",
                        help="mindpet_lite step: the project's TrainStep with global-norm clipping at 1.0, "
                             "PyTorch then clips too (trainer); nn.TrainOneStepCell, no clipping on either side (ref)")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--inproc", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--side", default="ms", help=argparse.SUPPRESS)
    args = parser.parse_args()
    C.print_header(__file__)
    if args.child:
        return child(args)
    if args.inproc:
        return inproc(args)

    me = os.path.abspath(__file__)
    common = ["--size", args.size, "--threads", args.threads, "--steps", args.steps, "--step", args.step]
    env = {"OMP_NUM_THREADS": str(args.threads)}
    res = {"ms": [], "torch": []}
    for i in range(args.pairs):
        for side in (("ms", "torch") if i % 2 == 0 else ("torch", "ms")):
            res[side].append(C.run_child(me, ["--child", "--side", side] + common, env=env))
    s = SIZES[args.size]
    tokens = s["batch_size"] * s["seq_length"]
    print(f"Llama {args.size} ({s}), LoRA r=8 on q/k/v/o, float32, CPU, {args.threads} threads; "
          f"mindpet_lite step = {args.step}; torch attention = {res['torch'][0]['attn']}")
    rows = []
    for side, name in (("ms", "mindpet_lite (MindSpore 2.9 GRAPH_MODE)"), ("torch", "PyTorch 2.13 + PEFT")):
        r = res[side]
        step = C.med([x["step_s"] for x in r])
        rows.append([name, f"{r[0]['trainable']:,}", step * 1e3, tokens / step, C.med([x["first_step_s"] for x in r]),
                     C.med([x["rss_runtime_mb"] for x in r]), C.med([x["peak_rss_mb"] for x in r])])
    ratios = [a["step_s"] / b["step_s"] for a, b in zip(res["ms"], res["torch"])]
    rss_ratios = [a["peak_rss_mb"] / b["peak_rss_mb"] for a, b in zip(res["ms"], res["torch"])]
    print(f"\n### Process pairs ({args.pairs} pairs, {args.steps} timed steps each, medians)\n")
    print(C.table(["", "trainable", "step ms", "tokens/s", "first step s (compile)", "RSS after imports MB",
                   "peak RSS MB"], rows))
    print(f"\nmindpet_lite / PyTorch+PEFT step time: {C.med(ratios):.3f} (pairs: "
          f"{', '.join(f'{x:.3f}' for x in ratios)}); peak RSS: {C.med(rss_ratios):.3f}")

    r = C.run_child(me, ["--inproc", "--reps", args.reps] + common, env=env)
    rw, w1, w3 = C.ratio_stats(r["wall"]["mindpet_lite"], r["wall"]["torch+peft"])
    rc, c1, c3 = C.ratio_stats(r["cpu"]["mindpet_lite"], r["cpu"]["torch+peft"])
    print(f"\n### One process, steps interleaved ({args.reps} rounds)\n")
    print(C.table(["", "step ms (median)", "CPU ms (median)"],
                  [[k, C.med(r["wall"][k]) * 1e3, C.med(r["cpu"][k]) * 1e3] for k in r["wall"]]))
    print(f"\nmindpet_lite / PyTorch+PEFT: wall {rw:.3f} [{w1:.3f}, {w3:.3f}], CPU {rc:.3f} [{c1:.3f}, {c3:.3f}]")
    print("\n### Targets\n")
    pair = C.med(ratios)
    print(C.table(["target", "process pairs", "one process (wall / CPU)", ""],
                  [["mindpet_lite step / PyTorch+PEFT step <= 1.00", f"{pair:.3f}", f"{rw:.3f} / {rc:.3f}",
                    "met" if max(pair, rw) <= 1.0 else "NOT met"],
                   ["mindpet_lite peak RSS / PyTorch+PEFT <= 1.00", f"{C.med(rss_ratios):.3f}", "",
                    "met" if C.med(rss_ratios) <= 1.0 else "NOT met"]]))
    return None


if __name__ == "__main__":
    main()
