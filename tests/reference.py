"""Independent numpy reference math for the tests. Never imports the code under test."""
import numpy as np

ACTIVATIONS = {
    None: (lambda z: z, lambda z: np.ones_like(z)),
    "tanh": (np.tanh, lambda z: 1.0 - np.tanh(z) ** 2),
    "relu": (lambda z: np.maximum(z, 0.0), lambda z: (z > 0).astype(z.dtype)),
}


def lora_scaling(alpha, rank, rslora=False):
    return alpha / (np.sqrt(rank) if rslora else rank)


def lora_forward(x, w, b, a, bmat, scaling, activation=None):
    """activation(x·Wᵀ + b + s·(x·Aᵀ)·Bᵀ) over the last axis, in float64."""
    x64 = x.astype(np.float64)
    z = x64 @ w.T.astype(np.float64) + scaling * (x64 @ a.T.astype(np.float64)) @ bmat.T.astype(np.float64)
    if b is not None:
        z = z + b.astype(np.float64)
    return ACTIVATIONS[activation][0](z)


def lora_grads(x, w, b, a, bmat, scaling, g, activation=None):
    """Gradients of sum(g * forward) w.r.t. x, A and B, in float64."""
    x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
    g2 = g.reshape(-1, g.shape[-1]).astype(np.float64)
    w, a, bmat = (m.astype(np.float64) for m in (w, a, bmat))
    z = x2 @ w.T + scaling * (x2 @ a.T) @ bmat.T
    if b is not None:
        z = z + b
    dz = g2 * ACTIVATIONS[activation][1](z)
    dx = dz @ w + scaling * (dz @ bmat) @ a
    da = scaling * (dz @ bmat).T @ x2
    db = scaling * dz.T @ (x2 @ a.T)
    return dx.reshape(x.shape), da, db
