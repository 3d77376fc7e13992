"""Independent numpy reference math for the tests. Never imports the code under test.

LoRA (forward, gradients, merge), the Llama forward and loss, held-out metrics, the lr schedule and
one SGD step, each written from the math, in float64 where it matters.
"""
import numpy as np

# ------------------------------------------------------------------------------------------------
# LoRA
# ------------------------------------------------------------------------------------------------
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


def merged_weight(w, a, bmat, scaling, layout="out_in"):
    """W + s·B·A in float64. ``layout`` is W's: 'out_in' ([out, in], nn.Dense's) or 'in_out'
    ([in, out], a transpose_b=False checkpoint), where the update is added transposed."""
    delta = scaling * (bmat.astype(np.float64) @ a.astype(np.float64))  # [out, in]
    if layout not in ("out_in", "in_out"):
        raise ValueError(f"layout must be 'out_in' or 'in_out', got {layout!r}")
    return w.astype(np.float64) + (delta if layout == "out_in" else delta.T)


def dora_forward(x, w, b, a, bmat, m, scaling, activation=None):
    """DoRA: activation(m / ‖W + s·B·A‖_row ⊙ x·(W + s·B·A)ᵀ + b), float64."""
    v = w.astype(np.float64) + scaling * (bmat.astype(np.float64) @ a.astype(np.float64))
    c = m.astype(np.float64) / np.linalg.norm(v, axis=1)
    z = (x.astype(np.float64) @ v.T) * c
    if b is not None:
        z = z + b.astype(np.float64)
    return ACTIVATIONS[activation][0](z)


def dora_grads(x, w, b, a, bmat, m, scaling, g, activation=None):
    """Gradients of sum(g * dora_forward) w.r.t. x, A, B and m, the row norm held constant (the
    paper's section 4.3), float64."""
    x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
    g2 = g.reshape(-1, g.shape[-1]).astype(np.float64)
    w, a, bmat, m = (t.astype(np.float64) for t in (w, a, bmat, m))
    v = w + scaling * bmat @ a
    norm = np.linalg.norm(v, axis=1)
    y = x2 @ v.T
    z = y * (m / norm) + (b if b is not None else 0.0)
    dz = g2 * ACTIVATIONS[activation][1](z)
    dy = dz * (m / norm)
    dv = dy.T @ x2  # [out, in]: the gradient reaching W + s·B·A through the product only
    dm = np.sum(dz * y, axis=0) / norm
    return (dy @ v).reshape(x.shape), scaling * bmat.T @ dv, scaling * dv @ a.T, dm


def dora_merged_weight(w, a, bmat, m, scaling):
    """m / ‖W + s·B·A‖_row ⊙ (W + s·B·A), float64."""
    v = w.astype(np.float64) + scaling * (bmat.astype(np.float64) @ a.astype(np.float64))
    return v * (m.astype(np.float64) / np.linalg.norm(v, axis=1))[:, None]


# ------------------------------------------------------------------------------------------------
# Llama (float64), from the papers' math: RMSNorm, rotary pairs (i, i + D/2), grouped-query causal
# attention, SwiGLU
# ------------------------------------------------------------------------------------------------
def rms_norm(x, w, eps):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rotary(x, theta):
    """Rotate the pair (x[i], x[i + D/2]) of each row t by angle t * theta^(-2i/D)."""
    s, d = x.shape
    angle = np.arange(s)[:, None] * theta ** (-np.arange(0, d, 2) / d)[None, :]
    x1, x2 = x[:, : d // 2], x[:, d // 2:]
    c, sn = np.cos(angle), np.sin(angle)
    return np.concatenate([x1 * c - x2 * sn, x1 * sn + x2 * c], axis=1)


def silu(x):
    return x / (1.0 + np.exp(-x))


def prefix_layers(table, num_layers, num_heads, head_dim, w_in=None, b_in=None, w_out=None, b_out=None):
    """P-Tuning v2's prefix: the table [T, L*2*N*D] (through tanh(x·W_inᵀ + b_in)·W_outᵀ + b_out when
    given) read as row t = [layer, key/value, head, D]; returns [(keys [N, T, D], values [N, T, D])] a layer."""
    kv = table.astype(np.float64)
    if w_in is not None:
        kv = np.tanh(kv @ w_in.T + b_in) @ w_out.T + b_out
    kv = kv.reshape(kv.shape[0], num_layers, 2, num_heads, head_dim)
    return [(kv[:, i, 0].transpose(1, 0, 2), kv[:, i, 1].transpose(1, 0, 2)) for i in range(num_layers)]


def reference_logits(p, cfg, ids, prefix=None):
    """Logits [B, S, V] of a Llama with params ``p`` (name -> float64 array), one head at a time.
    ``prefix`` (from :func:`prefix_layers`): keys / values before each layer's, seen by every query,
    not rotated; the tokens keep positions 0..S-1."""
    nh, nkv, eps = cfg["num_heads"], cfg.get("n_kv_heads") or cfg["num_heads"], cfg.get("rms_norm_eps", 1e-5)
    theta = cfg.get("theta", 10000.0)
    d = cfg["hidden_size"] // nh
    out = []
    for row in ids:
        s = len(row)
        x = p["model.tok_embeddings.embedding_weight"][row]
        causal = np.triu(np.full((s, s), -np.inf), k=1)
        for i in range(cfg["num_layers"]):
            pre = f"model.layers.{i}."
            h = rms_norm(x, p[pre + "attention_norm.weight"], eps)
            q = h @ p[pre + "attention.wq.weight"].T
            k = h @ p[pre + "attention.wk.weight"].T
            v = h @ p[pre + "attention.wv.weight"].T
            heads = []
            for head in range(nh):
                g = head // (nh // nkv)
                qh = rotary(q[:, head * d:(head + 1) * d], theta)
                kh = rotary(k[:, g * d:(g + 1) * d], theta)
                vh = v[:, g * d:(g + 1) * d]
                mask = causal
                if prefix is not None:
                    kh = np.concatenate([prefix[i][0][g], kh])
                    vh = np.concatenate([prefix[i][1][g], vh])
                    mask = np.concatenate([np.zeros((s, prefix[i][0].shape[1])), causal], axis=1)
                scores = qh @ kh.T / np.sqrt(d) + mask
                w = np.exp(scores - scores.max(axis=1, keepdims=True))
                heads.append((w / w.sum(axis=1, keepdims=True)) @ vh)
            x = x + np.concatenate(heads, axis=1) @ p[pre + "attention.wo.weight"].T
            h = rms_norm(x, p[pre + "ffn_norm.weight"], eps)
            gate = silu(h @ p[pre + "feed_forward.w1.weight"].T) * (h @ p[pre + "feed_forward.w3.weight"].T)
            x = x + gate @ p[pre + "feed_forward.w2.weight"].T
        x = rms_norm(x, p["model.norm_out.weight"], eps)
        head_w = p.get("lm_head.weight", p["model.tok_embeddings.embedding_weight"])
        out.append(x @ head_w.T)
    return np.stack(out)


def log_softmax(logits):
    logits = logits.astype(np.float64)
    m = logits.max(-1, keepdims=True)
    return logits - m - np.log(np.exp(logits - m).sum(-1, keepdims=True))


def reference_loss(logits, labels, ignore=-100):
    """Mean over kept positions of -log softmax(logits)[label]."""
    logp = log_softmax(logits)
    keep = labels != ignore
    if not keep.any():
        return 0.0
    return -np.mean(logp[keep, labels[keep]])


def eval_metrics(logits, labels, ignore=-100):
    """Held-out metrics of next-token ``logits`` [B, S, V] against their ``labels`` [B, S] (already
    aligned: labels[:, t] is the target of logits[:, t]).

    loss: mean NLL per label token; token_accuracy: share of label tokens that are the argmax;
    exact_match: share of all rows whose every label token is the argmax (a row without label
    tokens is no match); tokens, rows. Also 'row_match', the per-row booleans."""
    keep = labels != ignore
    hit = (np.argmax(logits, -1) == labels) & keep
    row_match = np.array([bool(k.any()) and bool(h[k].all()) for h, k in zip(hit, keep)])
    tokens = int(keep.sum())
    return {"loss": reference_loss(logits, labels, ignore), "token_accuracy": hit.sum() / tokens,
            "exact_match": row_match.sum() / len(labels), "tokens": tokens, "rows": len(labels),
            "row_match": row_match}


# ------------------------------------------------------------------------------------------------
# training: lr schedule, a regression's gradients, one SGD step
# ------------------------------------------------------------------------------------------------
def lr_schedule(kind, lr, total, warmup, lr_end=0.0, lr_init=0.0):
    """Learning rate of steps 1..total: linear warmup from lr_init, then constant or cosine to lr_end."""
    t = np.arange(1, total + 1, dtype=np.float64)
    warm = lr_init + (lr - lr_init) * t / max(warmup, 1)
    if kind == "constant":
        after = np.full_like(t, lr)
    else:
        progress = np.clip((t - 1 - warmup) / max(total - warmup, 1), 0, 1)
        after = lr_end + (lr - lr_end) * 0.5 * (1 + np.cos(np.pi * progress))
    return np.where(t <= warmup, warm, after)


def regression_loss(w, b, x, y):
    """mean((x·Wᵀ + b - y)²)."""
    r = x @ w.T + b - y
    return float(np.mean(r * r))


def regression_grads(w, b, x, y):
    """Gradients [dW, db] of mean((x·Wᵀ + b - y)²)."""
    r = x @ w.T + b - y
    n = r.size
    return [2.0 * r.T @ x / n, 2.0 * r.sum(0) / n]


def sgd_update(params, grads, lr, clip=None):
    """One SGD update after global-norm clipping at ``clip`` (None: no clipping)."""
    if clip is not None:
        norm = np.sqrt(sum(float((g ** 2).sum()) for g in grads))
        grads = [g * clip / max(norm, clip) for g in grads]
    return [p - lr * g for p, g in zip(params, grads)]
