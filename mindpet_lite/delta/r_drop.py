"""R-Drop (Liang et al. 2021), a drop-in for MindPet's ``mindpet.delta.r_drop``: run every example twice
(two dropout masks) and pull the two predictions together.

    rdrop_repeat(x)  = x0, x0, x1, x1, ...      each row twice, side by side (numpy's repeat on axis 0)
    RDropLoss(z, y)  = CE(z, y) + alpha/4 · (KL(p_odd ‖ p_even) + KL(p_even ‖ p_odd))

CE is the mean cross-entropy over all 2N rows; p_even / p_odd the softmax of rows 0, 2, ... and 1, 3, ...
(the two passes of one example), each KL summed over rows and classes, as MindPet computes it. MindPet's
``rdrop_repeat`` fails on MindSpore 2.9 (``Tensor.repeat`` no longer takes ``axis``): this is what its
tests ask of it.
"""
from mindspore import Tensor, nn, ops

from mindpet_lite import _checks


def rdrop_repeat(*items):
    """Each Tensor with every row (axis 0) repeated twice in place: [a, b] -> [a, a, b, b].

    Raises:
        TypeError: an item that is not a Tensor (its position named).
    """
    for i, item in enumerate(items):
        if not isinstance(item, Tensor):
            raise TypeError(f"items[{i}] must be a mindspore Tensor, got {_checks.describe(item)}")
    return tuple(ops.repeat_interleave(item, 2, 0) for item in items)


class RDropLoss(nn.Cell):
    r"""Cross-entropy plus R-Drop's symmetric KL between the two passes of each example.

    Inputs:
        - **logits** (Tensor) - float (2N, C): rows 2i and 2i+1 are the two passes of example i
          (`rdrop_repeat` of the inputs).
        - **label_ids** (Tensor) - int (2N,) class indices (any shape with 2N elements).
        - **alpha** (float) - weight of the KL term. Default 4, as MindPet.

    Outputs:
        Tensor, the scalar loss.

    Raises:
        ValueError: logits not 2-D, or an odd number of rows.
    """

    def __init__(self):
        super().__init__()
        self.cross_entropy_loss = nn.CrossEntropyLoss()
        self.log_softmax = nn.LogSoftmax(axis=-1)
        self.softmax = nn.Softmax(axis=-1)

    def construct(self, logits, label_ids, alpha=4):
        if logits.ndim != 2 or logits.shape[0] % 2 != 0:
            raise ValueError("RDropLoss: logits must be (2N, C), two rows per example")
        ce = self.cross_entropy_loss(logits, label_ids.reshape(-1))
        z1, z2 = logits[0::2], logits[1::2]
        logp1, logp2 = self.log_softmax(z1), self.log_softmax(z2)
        p1, p2 = self.softmax(z1), self.softmax(z2)
        kl = (p2 * (logp2 - logp1)).sum() + (p1 * (logp1 - logp2)).sum()
        return ce + kl / 4 * alpha
