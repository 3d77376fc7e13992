"""A minimal LoRA run with mindpet_lite: wrap the dense layers of a small network with LoRADense,
freeze all but the LoRA weights, train a few steps on a task the base net was not made for, and
print the trainable-parameter report and the loss.

    python examples/lora_dense_example.py
"""
import logging

import mindspore as ms
import numpy as np
from mindspore import Tensor, nn

from mindpet_lite import LoRADense, freeze_delta, trainable_params_report


class MLP(nn.Cell):
    def __init__(self, d_in=64, d_hidden=256, d_out=16):
        super().__init__()
        self.fc1 = nn.Dense(d_in, d_hidden, activation="relu")
        self.fc2 = nn.Dense(d_hidden, d_out)

    def construct(self, x):
        return self.fc2(self.fc1(x))


def main():
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    ms.set_context(mode=ms.GRAPH_MODE)
    ms.set_device("CPU")
    ms.set_seed(0)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((512, 64)).astype(np.float32)
    target = np.tanh(x @ (rng.standard_normal((64, 16)) * 0.3)).astype(np.float32)

    net = MLP()
    net.fc1 = LoRADense.from_dense(net.fc1, lora_rank=4, lora_alpha=8)
    net.fc2 = LoRADense.from_dense(net.fc2, lora_rank=4, lora_alpha=8)
    freeze_delta(net, "lora")
    report = trainable_params_report(net)
    print(f"trainable {report['trainable']} / {report['total']} ({report['percent']:.2f}%)")

    loss_net = nn.WithLossCell(net, nn.MSELoss())
    opt = nn.Adam(net.trainable_params(), learning_rate=1e-2)
    step = nn.TrainOneStepCell(loss_net, opt)
    frozen_before = net.fc1.weight.asnumpy().copy()
    for i in range(201):
        loss = step(Tensor(x), Tensor(target))
        if i % 50 == 0:
            print(f"step {i:4d}  loss {float(loss.asnumpy()):.5f}")
    assert np.array_equal(frozen_before, net.fc1.weight.asnumpy()), "a frozen weight changed"
    print("base weights unchanged; only the LoRA matrices were trained")


if __name__ == "__main__":
    main()
