"""Layer benchmark: LoRADense vs nn.Dense vs MindPet's LoRADense, forward and forward+backward.

Run (from anywhere; the script works in a temp dir because importing mindpet writes ./output/log):

    python benchmarks/bench_layer.py                 # the tables of benchmarks/README.md (~5 min)
    python benchmarks/bench_layer.py --quick         # fewer repetitions, small shape only
    python benchmarks/bench_layer.py --breakdown     # + where the time goes (MindSpore profiler)

Every layer: compute_dtype float32, no bias, frozen weight (requires_grad=False), GRAPH_MODE, CPU,
2 threads. "fwd" is layer(x); "fwd+bwd" returns layer(x) and the gradients w.r.t. x and the
trainable parameters (LoRA A and B; none for Dense and for the merged layer, whose A and B are
frozen as they would be for serving), with dy given as an input.

Variants, timed side by side in one process (interleaved, rotating order, medians after warm-up;
ratios are medians of per-round ratios with their inter-quartile range):
  dense        nn.Dense
  lora         mindpet_lite LoRADense (chooses its form from the shapes; see delta/lora.py)
  lora-branch  the same layer forced to the textbook form x·Wᵀ + s·(x·Aᵀ)·Bᵀ (the form before fix)
  mindpet      mindpet.delta.lora.LoRADense (MindPet 1.0.4)
  merged       mindpet_lite LoRADense after merge()
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  pylint: disable=wrong-import-position

SHAPES = [(4096, 1024, 1024), (4096, 4096, 4096)]
RANKS = [8, 64]


def build(ms, variants, n_in, n_out, rank):
    """{variant: (fwd_fn, fwdbwd_fn)} for inputs (x, dy)."""
    # pylint: disable=import-outside-toplevel
    import numpy as np
    from mindspore import ParameterTuple, Tensor, nn, ops
    from mindpet_lite.delta.lora import LoRADense

    class ValueAndGrad(nn.Cell):
        def __init__(self, net):
            super().__init__()
            self.net = net
            self.params = ParameterTuple(net.trainable_params())
            self.grad = ops.GradOperation(get_all=True, get_by_list=True, sens_param=True)

        def construct(self, x, dy):
            return self.net(x), self.grad(self.net, self.params)(x, dy)

    rng = np.random.default_rng(0)
    w = Tensor((rng.standard_normal((n_out, n_in)) / np.sqrt(n_in)).astype(np.float32))
    a = Tensor((rng.standard_normal((rank, n_in)) / np.sqrt(n_in)).astype(np.float32))
    b = Tensor((rng.standard_normal((n_out, rank)) * 0.01).astype(np.float32))

    def lora(cls, **kw):
        cell = cls(n_in, n_out, rank, 2 * rank, compute_dtype=ms.float32, has_bias=False,
                   weight_init=w, lora_a_init=a, lora_b_init=b, **kw)
        cell.weight.requires_grad = False
        return cell

    nets = {}
    for name in variants:
        if name == "dense":
            net = nn.Dense(n_in, n_out, weight_init=w, has_bias=False)
            net.weight.requires_grad = False
        elif name == "lora":
            net = lora(LoRADense)
        elif name == "lora-branch":
            net = lora(LoRADense)
            net._fold_mode = False  # pylint: disable=protected-access
        elif name == "lora-fold":
            net = lora(LoRADense)
            net._fold_mode = True  # pylint: disable=protected-access
        elif name == "mindpet":
            from mindpet.delta.lora import LoRADense as MindPetLoRADense
            net = lora(MindPetLoRADense)
        elif name == "merged":
            net = lora(LoRADense).merge()
            net.mindpet_delta_lora_a.requires_grad = False
            net.mindpet_delta_lora_b.requires_grad = False
        else:
            raise ValueError(name)
        vag = ValueAndGrad(net)
        nets[name] = (net, vag)
    return nets


def run_shape(ms, n, n_in, n_out, rank, variants, reps, warmup):
    import numpy as np  # pylint: disable=import-outside-toplevel
    from mindspore import Tensor  # pylint: disable=import-outside-toplevel
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((n, n_in)).astype(np.float32))
    dy = Tensor(rng.standard_normal((n, n_out)).astype(np.float32))
    nets = build(ms, variants, n_in, n_out, rank)
    fns = {}
    for name, (net, vag) in nets.items():
        fns[(name, "fwd")] = lambda net=net: net(x)
        fns[(name, "fwd+bwd")] = lambda vag=vag: vag(x, dy)
    # GRAPH_MODE execution on CPU returns when the kernels are done (measured: a following
    # asnumpy() takes 0.1 ms), so no explicit synchronisation is needed.
    return C.interleaved(fns, reps=reps, warmup=warmup)


def breakdown(ms, n=4096, n_in=1024, n_out=1024, rank=8):
    """Per-kernel times of one LoRA fwd+bwd step, each form, from MindSpore's profiler."""
    # pylint: disable=import-outside-toplevel
    import csv
    import glob
    import numpy as np
    from mindspore import Tensor
    from mindspore.profiler import ProfilerActivity, profile, tensorboard_trace_handler
    rng = np.random.default_rng(1)
    x = Tensor(rng.standard_normal((n, n_in)).astype(np.float32))
    dy = Tensor(rng.standard_normal((n, n_out)).astype(np.float32))
    out = []
    for name in ("dense", "lora-branch", "lora-fold", "mindpet"):
        _, vag = build(ms, [name], n_in, n_out, rank)[name]
        for _ in range(3):
            vag(x, dy)
        path = os.path.abspath(f"prof_{name}")
        with profile(activities=[ProfilerActivity.CPU], on_trace_ready=tensorboard_trace_handler(path)) as prof:
            for _ in range(8):
                vag(x, dy)
                prof.step()
        rows = list(csv.DictReader(open(glob.glob(path + "/*/FRAMEWORK/cpu_op_detail_info_0.csv")[0],
                                        encoding="utf-8")))
        kernels = sorted(((float(r["op_avg_time(ms)"]), r["full_op_name"]) for r in rows), reverse=True)
        total = sum(t for t, _ in kernels)
        big = sum(t for t, _ in kernels[:2]) if name != "dense" else total
        out.append((name, total, big, kernels))
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small shape, fewer repetitions")
    parser.add_argument("--breakdown", action="store_true", help="also profile one fwd+bwd per form")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--only-large", action="store_true", help="only the [4096,4096] shape")
    parser.add_argument("--large-rounds", type=int, default=10, help="interleaved rounds at [4096,4096]")
    args = parser.parse_args()
    C.print_header(__file__)
    ms = C.setup(args.threads)
    variants = ["dense", "lora", "lora-branch", "mindpet", "merged"]
    shapes = SHAPES[:1] if args.quick else SHAPES
    if args.only_large:
        shapes = [s for s in SHAPES if s[1] * s[2] > 4e6]
    print(f"mindspore {ms.__version__}, GRAPH_MODE, CPU, {args.threads} threads, float32, frozen weight, no bias")

    summary = []
    for n, n_in, n_out in shapes:
        for rank in RANKS:
            big = n_in * n_out > 4e6
            reps = (4 if args.quick else args.large_rounds) if big else (10 if args.quick else 60)
            wall, cpu = run_shape(ms, n, n_in, n_out, rank, variants, reps=reps, warmup=2 if big else 3)
            label = f"x[{n},{n_in}]->{n_out} r={rank}"
            rows = []
            for mode in ("fwd", "fwd+bwd"):
                for name in variants:
                    key, base, ref = (name, mode), ("dense", mode), ("mindpet", mode)
                    rw, w1, w3 = C.ratio_stats(wall[key], wall[base])
                    rc, c1, c3 = C.ratio_stats(cpu[key], cpu[base])
                    mw, mc = C.ratio_stats(wall[key], wall[ref])[0], C.ratio_stats(cpu[key], cpu[ref])[0]
                    rows.append([mode, name, C.med(wall[key]) * 1e3, f"{rw:.3f} [{w1:.3f}, {w3:.3f}]",
                                 f"{rc:.3f} [{c1:.3f}, {c3:.3f}]", f"{mw:.3f}", f"{mc:.3f}"])
                    summary.append((label, mode, name, rw, rc, mw, mc))
            print(f"\n### {label}  ({reps} interleaved rounds)\n")
            print(C.table(["pass", "variant", "median wall ms", "/ dense, wall [IQR]", "/ dense, CPU [IQR]",
                           "/ mindpet, wall", "/ mindpet, CPU"], rows))

    print("\n### Targets\n")
    trows = []

    def verdict(wall_r, cpu_r, limit):
        return "met" if max(wall_r, cpu_r) <= limit else ("met (one clock)" if min(wall_r, cpu_r) <= limit else "NOT met")

    for label, mode, name, rw, rc, mw, mc in summary:
        if name == "lora":
            if label.startswith("x[4096,1024]->1024 r=8"):
                trows.append([label, mode, "lora / dense <= 1.05", f"{rw:.3f}", f"{rc:.3f}", verdict(rw, rc, 1.05)])
            trows.append([label, mode, "lora / mindpet <= 1.00", f"{mw:.3f}", f"{mc:.3f}", verdict(mw, mc, 1.0)])
        if name == "merged":
            trows.append([label, mode, "merged / dense <= 1.01", f"{rw:.3f}", f"{rc:.3f}", verdict(rw, rc, 1.01)])
    print(C.table(["shape", "pass", "target", "wall", "CPU", ""], trows))

    if args.breakdown:
        print("\n### Where the time goes: fwd+bwd at x[4096,1024]->1024 r=8, MindSpore profiler, "
              "ms per kernel (avg of 8 steps)\n")
        for name, total, big, kernels in breakdown(ms):
            print(f"{name}: kernels total {total:.2f} ms, two largest (x·Wᵀ, dy·W) {big:.2f} ms, "
                  f"the rest {total - big:.2f} ms = {100 * (total - big) / big:.1f}% of them")
            for ms_, op in kernels:
                print(f"    {ms_:8.3f}  {op}")


if __name__ == "__main__":
    main()
