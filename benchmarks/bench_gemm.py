"""One float32 MatMul, MindSpore (GRAPH_MODE) against PyTorch, at the demo's shapes and a large one, for
several CPU kernel pool sizes: what decides the main job's speed on a given CPU.

Run (from anywhere; ~2 min; nothing else running):

    python benchmarks/bench_gemm.py                    # threads 1, 2 and 25 (MindSpore's default pool)
    python benchmarks/bench_gemm.py --threads 1 2

Each (framework, thread count) runs in its own process (MindSpore sizes its pool once per process).
A shape is called back to back for about a second after two warm-up calls; GFLOP/s = 2·M·K·N per call
over the wall time, the result copied back to numpy each call (as a training step would not: the
per-call overhead is in the number, and is reported alone by the [8,8]x[8,8] row). The demo's shapes:
[2560,128]x[128,384] is a q/k/v/o-sized projection of a batch of 32 x 80 tokens with its 3x-wide MLP,
[1024,128]x[128,384] a smaller batch.
"""
import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _common as C  # noqa: E402  pylint: disable=wrong-import-position

SHAPES = [(8, 8, 8), (4096, 1024, 1024), (2560, 128, 384), (2560, 384, 128), (2560, 128, 128), (1024, 128, 384)]


def _rate(fn, flops):
    fn()
    fn()
    start, calls = time.perf_counter(), 0
    while time.perf_counter() - start < 1.0:
        fn()
        calls += 1
    seconds = (time.perf_counter() - start) / calls
    return flops / seconds / 1e9, seconds


def child(framework, threads):
    """{shape: (GFLOP/s, ms per call)} for one framework and pool size, printed as a JSON line."""
    import numpy as np  # pylint: disable=import-outside-toplevel
    out = {}
    if framework == "mindspore":
        ms = C.setup(threads=threads)
        from mindspore import Tensor, nn, ops  # pylint: disable=import-outside-toplevel

        class MatMul(nn.Cell):
            def __init__(self):
                super().__init__()
                self.matmul = ops.MatMul(transpose_b=True)

            def construct(self, a, b):
                return self.matmul(a, b)
        net = MatMul()
        del ms
        for m, k, n in SHAPES:
            a, b = Tensor(np.random.rand(m, k).astype(np.float32)), Tensor(np.random.rand(n, k).astype(np.float32))
            out[f"{m},{k},{n}"] = _rate(lambda: net(a, b).asnumpy(), 2 * m * k * n)  # pylint: disable=cell-var-from-loop
    else:
        import torch  # pylint: disable=import-outside-toplevel
        torch.set_num_threads(threads)
        for m, k, n in SHAPES:
            a, b = torch.rand(m, k), torch.rand(n, k)
            out[f"{m},{k},{n}"] = _rate(lambda: (a @ b.T).numpy(), 2 * m * k * n)  # pylint: disable=cell-var-from-loop
    C.emit(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2, 25])
    parser.add_argument("--child", nargs=2, metavar=("FRAMEWORK", "THREADS"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
        return
    C.print_header(__file__)
    results = {}
    for threads in args.threads:
        for framework in ("mindspore", "torch"):
            if framework == "torch" and threads > os.cpu_count():
                continue
            env = dict(os.environ, OMP_NUM_THREADS=str(threads))
            results[(framework, threads)] = C.run_child(__file__, ["--child", framework, str(threads)], env=env)
    columns = list(results)
    rows = []
    for m, k, n in SHAPES:
        key = f"{m},{k},{n}"
        cells = []
        for col in columns:
            rate, seconds = results[col][key]
            cells.append(f"{seconds * 1e3:.3f} ms" if m == 8 else f"{rate:.0f}")
        rows.append([f"[{m},{k}]x[{k},{n}]"] + cells)
    print(C.table(["shape (GFLOP/s; [8,8]: ms a call)"] + [f"{f} {t} thr" for f, t in columns], rows))
    print(f"# load average {os.getloadavg()[0]:.1f} at the end")


if __name__ == "__main__":
    main()
