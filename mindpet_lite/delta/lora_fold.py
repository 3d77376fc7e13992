"""The folded form of a LoRA matmul, y = x·(W + s·B·A)ᵀ, with a hand-written backward.

On CPU the branch form's skinny [N, in]x[in, r] matmul, its [N, out] add and their backward twins
cost ~3–4% of the main matmul each; folding replaces them by [out, in] element-wise work, which is
cheaper whenever N is large next to in·out / (in + 4·out) (benchmarks/README.md)."""
from mindspore import nn, ops

def fold_pays(rows, in_channels, out_channels):
    """Forward element traffic of the branch (read x for x·Aᵀ, write h·Bᵀ, the add) against the
    fold's (write B·A, read W and it, write W + s·B·A). Training favours the fold even more."""
    return rows * (in_channels + 4 * out_channels) > 4 * in_channels * out_channels


class FoldedLoRAMatMul(nn.Cell):
    """y = x·(W + s·B·A)ᵀ with the LoRA backward through the narrow products.

    Gradients returned for every input; those nobody asks for (a frozen W's dW = dyᵀ·x) are pruned
    from the compiled graph, so a frozen weight costs no [out, in] matmul."""

    def __init__(self, scaling):
        super().__init__()
        self.scaling = scaling
        self.matmul = ops.MatMul()
        self.matmul_tb = ops.MatMul(transpose_b=True)
        self.matmul_ta = ops.MatMul(transpose_a=True)
        self.transpose = ops.Transpose()

    def construct(self, x, weight, lora_a, lora_b):
        folded = weight + self.matmul(lora_b * self.scaling, lora_a)  # [out, r]x[r, in]
        return self.matmul_tb(x, folded)

    def bprop(self, x, weight, lora_a, lora_b, out, dout):  # pylint: disable=unused-argument
        b_scaled = lora_b * self.scaling
        dx = self.matmul(dout, weight + self.matmul(b_scaled, lora_a))  # W + s·B·A is shared with construct
        d_weight = self.matmul_ta(dout, x)  # pruned when W is frozen
        # the narrow products as [r, N]·[N, *] with the small operand transposed first: on CPU a
        # transpose_a MatMul over the [N, *] operand costs 1.5-2.5x as much (benchmarks/README.md)
        g_t = self.transpose(self.matmul(dout, b_scaled), (1, 0))  # (s·dy·B)ᵀ: [r, N]
        d_a = self.matmul(g_t, x)  # [r, in]
        h_t = self.transpose(self.matmul_tb(x, lora_a), (1, 0))  # (x·Aᵀ)ᵀ: [r, N]
        d_b = self.transpose(self.matmul(h_t, dout) * self.scaling, (1, 0))  # s·(hᵀ·dy)ᵀ: [out, r]
        return dx, d_weight, d_a, d_b
