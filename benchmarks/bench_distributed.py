"""Distributed overhead: msrun with 1 vs 2 CPU workers on the same global batch.

Run (from anywhere; ~4 min):

    python benchmarks/bench_distributed.py                   # LoRA and full, global batch 8, 2 repetitions
    python benchmarks/bench_distributed.py --modes lora --reps 1

Each run is launched with the project's `scripts/msrun_launcher.sh` (WORKER_NUM 1 runs the command
directly, WORKER_NUM 2 under msrun with MindSpore's own CPU collectives), and each worker runs the
project's training step: `mindpet_lite.train.parallel.init_parallel` (DATA_PARALLEL, gradients_mean),
the built-in tiny Llama (hidden 512, 4 layers, seq 256), `mindpet_lite.train.step.TrainStep` with
`nn.DistributedGradReducer` and clipping at 1.0, AdamWeightDecay. Same global batch in both cases:
1 worker x batch 8, or 2 workers x batch 4 (each worker its half of the same rows).

Threads: the machine has 2 cores, so the total is kept at 2: 1 worker x 2 threads vs 2 workers x 1
thread (MindSpore's CPU kernel pool, `threads_num`, and OMP_NUM_THREADS). The configurations alternate
(1, 2, 1, 2, ...); each worker times `--steps` steps after 2 warm-up steps; rank 0's median is the
step time. The all-reduce alone (the gradients of one step, in one process pair) is timed too.
"""
import argparse
import json
import os
import shlex
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  pylint: disable=wrong-import-position
from bench_model import LORA, SIZES  # noqa: E402  pylint: disable=wrong-import-position

LAUNCHER = os.path.join(C.REPO, "scripts", "msrun_launcher.sh")


def worker(args):
    """One worker of the job (also the msrun scheduler process, which stays in init())."""
    # pylint: disable=import-outside-toplevel
    ms = C.setup(args.threads)
    from mindpet_lite.train.parallel import init_parallel, is_distributed
    rank, size = init_parallel(device_target=None, use_parallel=is_distributed())
    import numpy as np
    from mindspore import Tensor, nn
    from mindspore.communication import GlobalComm
    from mindpet_lite.models.llama import LlamaConfig, LlamaForCausalLM
    from mindpet_lite.pet import get_pet_model
    import mindpet_lite.train as T
    from types import SimpleNamespace

    cfg = dict(SIZES["tiny"])
    ms.set_seed(0)
    net = LlamaForCausalLM(LlamaConfig(**cfg))
    if args.mode == "lora":
        get_pet_model(net, dict(LORA))
    params = net.trainable_params()
    opt = T.build_optimizer(params, SimpleNamespace(beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0), [1e-4] * 1000)
    reducer = None
    if size > 1:
        reducer = nn.DistributedGradReducer(opt.parameters, mean=False, degree=size, group=GlobalComm.WORLD_COMM_GROUP)
    step = T.TrainStep(net, opt, clip_norm=1.0, reducer=reducer, rank_size=size)
    step.set_train(True)
    per = args.global_batch // size
    rows = np.random.default_rng(0).integers(1, cfg["vocab_size"], (args.global_batch, cfg["seq_length"] + 1))
    ids = Tensor(rows[rank * per:(rank + 1) * per].astype(np.int32))
    t0 = time.perf_counter()
    step(ids, ids)
    first = time.perf_counter() - t0
    step(ids, ids)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        loss = step(ids, ids)
        times.append(time.perf_counter() - t0)
    allreduce = []
    if reducer is not None:  # the all-reduce of one step's gradients, alone
        from mindspore import ops
        grads = tuple(ops.ones_like(p) for p in opt.parameters)

        class Reduce(nn.Cell):
            def __init__(self, red):
                super().__init__()
                self.red = red

            def construct(self, g):
                return self.red(g)
        red = Reduce(reducer)
        red(grads)
        for _ in range(args.steps):
            t0 = time.perf_counter()
            red(grads)
            allreduce.append(time.perf_counter() - t0)
    out = {"rank": rank, "size": size, "per_worker_batch": per, "first_step_s": first, "times": times,
           "step_s": C.med(times), "loss": float(loss.asnumpy()), "peak_rss_mb": C.peak_rss_mb(),
           "allreduce_s": C.med(allreduce) if allreduce else 0.0,
           "grad_mb": sum(int(np.prod(p.shape)) for p in opt.parameters) * 4 / 2 ** 20}
    with open(os.path.join(args.out, f"rank_{rank}.json"), "w", encoding="utf-8") as f:
        json.dump(out, f)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(workers, mode, args):
    out = C.scratch_dir("mpl_dist_")
    threads = max(1, args.total_threads // workers)
    cmd = (f"python {shlex.quote(os.path.abspath(__file__))} --bench-worker --mode {mode} --threads {threads} "
           f"--global-batch {args.global_batch} --steps {args.steps} --out {shlex.quote(out)}")
    argv = ["bash", LAUNCHER, cmd, str(workers)]
    if workers > 1:
        argv += [str(_free_port()), os.path.join(out, "logs"), "True", "300"]
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("MS_") and k not in ("RANK_ID", "RANK_SIZE", "DEVICE_ID")}
    env["OMP_NUM_THREADS"] = str(threads)
    env["PYTHONPATH"] = C.REPO + os.pathsep + env.get("PYTHONPATH", "")
    t0 = time.perf_counter()
    proc = subprocess.run(argv, cwd=out, env=env, capture_output=True, text=True, timeout=900, check=False)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{workers} workers, {mode}: rc {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    ranks = []
    for r in range(workers):
        with open(os.path.join(out, f"rank_{r}.json"), encoding="utf-8") as f:
            ranks.append(json.load(f))
    return {"threads": threads, "job_s": wall, "ranks": ranks}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--modes", default="lora,full")
    parser.add_argument("--reps", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--global-batch", type=int, default=8)
    parser.add_argument("--total-threads", type=int, default=2)
    parser.add_argument("--bench-worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--mode", default="lora", help=argparse.SUPPRESS)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--out", default=".", help=argparse.SUPPRESS)
    args = parser.parse_args()
    C.print_header(__file__)
    if args.bench_worker:
        return worker(args)

    seq = SIZES["tiny"]["seq_length"]
    res = {}
    for mode in args.modes.split(","):
        for i in range(args.reps):
            for w in ((1, 2) if i % 2 == 0 else (2, 1)):
                res.setdefault((mode, w), []).append(launch(w, mode, args))
    print(f"tiny Llama, global batch {args.global_batch} x seq {seq}, TrainStep (clip 1.0) + AdamWeightDecay, "
          f"{args.total_threads} threads in total, {args.reps} repetitions (medians)")
    rows = []
    for mode in args.modes.split(","):
        one = C.med([r["ranks"][0]["step_s"] for r in res[(mode, 1)]])
        for w in (1, 2):
            runs = res[(mode, w)]
            step = C.med([r["ranks"][0]["step_s"] for r in runs])
            spread = max(abs(r["ranks"][0]["step_s"] - r["ranks"][-1]["step_s"]) for r in runs)
            rows.append([mode, w, f"{w} x {runs[0]['threads']}", runs[0]["ranks"][0]["per_worker_batch"], step * 1e3,
                         args.global_batch * seq / step, f"{step / one:.3f}",
                         C.med([r["ranks"][0]["allreduce_s"] for r in runs]) * 1e3 if w > 1 else "",
                         f"{runs[0]['ranks'][0]['grad_mb']:.1f}", C.med([r["ranks"][0]["first_step_s"] for r in runs]),
                         C.med([r["job_s"] for r in runs]), max(x["peak_rss_mb"] for r in runs for x in r["ranks"]),
                         f"{spread * 1e3:.0f}" if w > 1 else "",
                         " / ".join(f"{x['loss']:.4f}" for x in runs[0]["ranks"])])
    print("\n### 1 vs 2 workers, same global batch\n")
    print(C.table(["mode", "workers", "workers x threads", "batch / worker", "step ms (rank 0)", "tokens/s",
                   "2 workers / 1", "all-reduce alone ms", "grads MB", "first step s", "job wall s (launch to exit)",
                   "peak RSS / worker MB", "rank 0-1 step diff ms", "loss (per rank)"], rows))
    return None


if __name__ == "__main__":
    main()
