"""LoRA factors initialised from the base weight (PiSSA, OLoRA), as HF PEFT's `init_lora_weights`.

Both split W into a principal part s·B₀·A₀ that the adapter trains and a residual W - s·B₀·A₀ that
the base layer keeps, so the layer computes the same function at the start:

- PiSSA (Meng et al. 2024): the r leading singular triplets, W ≈ U_r·S_r·V_rᵀ, with
  A₀ = sqrt(S_r / s)·V_rᵀ and B₀ = U_r·sqrt(S_r / s). ``niter`` selects a randomized SVD (Halko,
  Martinsson, Tropp 2011) with that many power iterations instead of the full one.
- OLoRA (Büyükakyüz 2024): W = Q·R, B₀ = Q[:, :r], A₀ = R[:r] (then s·B₀·A₀ is subtracted as it is).

The functions take and return float numpy arrays [out, in] / [r, in] / [out, r]; the cell stores them.
"""
import numpy as np

WEIGHT_INITS = ("pissa", "olora")


def parse_weight_init(value):
    """('pissa', None), ('pissa', niter), ('olora', None), or None for an init that leaves W alone."""
    if not isinstance(value, str):
        return None
    if value == "pissa" or value == "olora":
        return value, None
    if value.startswith("pissa_niter_") and value[len("pissa_niter_"):].isdigit():
        return "pissa", int(value[len("pissa_niter_"):])
    return None


def _randomized_svd(weight, rank, niter, seed):
    """The leading `rank` singular triplets of `weight` from a Gaussian sketch refined by `niter`
    subspace (power) iterations, each re-orthonormalised for stability."""
    rng = np.random.default_rng(seed)
    sketch = weight @ rng.standard_normal((weight.shape[1], rank))
    basis, _ = np.linalg.qr(sketch)
    for _ in range(niter):
        basis, _ = np.linalg.qr(weight.T @ basis)
        basis, _ = np.linalg.qr(weight @ basis)
    small_u, sigma, vt = np.linalg.svd(basis.T @ weight, full_matrices=False)
    return basis @ small_u, sigma, vt


def pissa_factors(weight, rank, scaling, niter=None, seed=0):
    """(A₀ [r, in], B₀ [out, r]) with s·B₀·A₀ the rank-r principal part of W (float64 math)."""
    w = np.asarray(weight, dtype=np.float64)
    if niter is None:
        u, sigma, vt = np.linalg.svd(w, full_matrices=False)
        u, sigma, vt = u[:, :rank], sigma[:rank], vt[:rank]
    else:
        u, sigma, vt = _randomized_svd(w, rank, niter, seed)
    root = np.sqrt(sigma / scaling)
    return root[:, None] * vt, u * root[None, :]


def olora_factors(weight, rank):
    """(A₀ [r, in], B₀ [out, r]) = (R[:r], Q[:, :r]) of the QR decomposition W = Q·R (float64)."""
    q, r = np.linalg.qr(np.asarray(weight, dtype=np.float64))
    return r[:rank], q[:, :rank]


def weight_init_factors(method, weight, rank, scaling, niter=None):
    """The initial (A₀, B₀) of ``method`` ('pissa' / 'olora') for the [out, in] weight."""
    if method == "pissa":
        return pissa_factors(weight, rank, scaling, niter)
    if method == "olora":
        return olora_factors(weight, rank)
    raise ValueError(f"method must be one of {list(WEIGHT_INITS)}, got {method!r}")


def plain_lora_factors(lora_a, lora_b, init_a, init_b):
    """(A', B') of rank 2r with B'·A' = B·A - B₀·A₀: the update a PiSSA / OLoRA adapter made to the
    ORIGINAL weight, as an ordinary LoRA pair (HF PEFT's conversion): A' = [A; A₀], B' = [B, -B₀]."""
    return (np.concatenate([lora_a, init_a.astype(lora_a.dtype)], axis=0),
            np.concatenate([lora_b, -init_b.astype(lora_b.dtype)], axis=1))
