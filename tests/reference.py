"""Independent numpy reference math for the tests. Never imports the code under test.

LoRA (forward, gradients, merge), Adapter / LowRankAdapter, the prefix MLP, R-Drop, the Llama forward and loss, held-out metrics, the lr schedule and
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


def shard_block(array, split, rank):
    """The block of ``array`` that tensor-parallel rank ``rank`` holds: each axis is cut into
    ``split[axis]`` equal parts, and a split axis gives the rank its ``rank``-th part (one split
    axis per operand here, so the rank indexes it directly)."""
    index = []
    for size, parts in zip(array.shape, split):
        step = size // parts
        part = rank % parts
        index.append(slice(part * step, (part + 1) * step))
    return array[tuple(index)]


def tp_lora_forward(x, w, b, a, bmat, scaling, plan, tp, transpose_b=True):
    """The LoRA layer computed as ``tp`` ranks would, each on its blocks of x, W, A, B, b given by
    the shard strategies ``plan`` (LoRADense.shard's keyword names), then combined as the
    collectives do: a product whose contracted axis is split is summed over the ranks (AllReduce),
    an output whose feature axis is split is concatenated (AllGather). x is [N, in]; W is
    [out, in] (``transpose_b``) or [in, out]."""
    x = x.astype(np.float64)
    xs, ws = plan["strategy_org_dense_matmul"]
    a_xs, a_s = plan["strategy_lora_a_matmul"]
    h_s, b_s = plan["strategy_lora_b_matmul"]
    base, narrow = [], []
    for rank in range(tp):
        w_r = shard_block(w.astype(np.float64), ws, rank)
        w_r = w_r.T if transpose_b else w_r  # [in part, out part]
        base.append(shard_block(x, xs, rank) @ w_r)
        narrow.append(shard_block(x, a_xs, rank) @ shard_block(a.astype(np.float64), a_s, rank).T)
    out_split = ws[0] if transpose_b else ws[1]
    base_out = sum(base) if xs[1] > 1 else np.concatenate(base, axis=1) if out_split > 1 else base[0]
    h = sum(narrow) if a_xs[1] > 1 else narrow[0]  # x·Aᵀ reduced once over the ranks
    h = scaling * h
    lora_parts = [shard_block(h, h_s, rank) @ shard_block(bmat.astype(np.float64), b_s, rank).T for rank in range(tp)]
    lora_out = np.concatenate(lora_parts, axis=1) if b_s[0] > 1 else lora_parts[0]
    out = base_out + lora_out
    if b is not None:
        bias_split = plan.get("strategy_org_bias_add", ((1, 1), (1,)))[1]
        out = out + np.concatenate([shard_block(b.astype(np.float64), bias_split, r) for r in range(bias_split[0])])
    return out


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
# ------------------------------------------------------------------------------------------------
# Adapter, LowRankAdapter (Compacter), prefix MLP, R-Drop
# ------------------------------------------------------------------------------------------------
_GELU_C = np.sqrt(2.0 / np.pi)


def gelu_tanh(z):
    """GELU, tanh approximation (MindSpore's nn.GELU default)."""
    return 0.5 * z * (1.0 + np.tanh(_GELU_C * (z + 0.044715 * z ** 3)))


def gelu_tanh_grad(z):
    t = np.tanh(_GELU_C * (z + 0.044715 * z ** 3))
    return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t ** 2) * _GELU_C * (1.0 + 3 * 0.044715 * z ** 2)


ACTIVATIONS["gelu"] = (gelu_tanh, gelu_tanh_grad)


def adapter_dense_forward(x, w, b, wd, bd, wu, bu, act="gelu", activation=None):
    """h = activation(x·Wᵀ + b); h + act(h·Wdᵀ + bd)·Wuᵀ + bu (W* are [out, in]), float64."""
    x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
    h = x2 @ w.T.astype(np.float64) + (0.0 if b is None else b)
    h = ACTIVATIONS[activation][0](h)
    z = h @ wd.T.astype(np.float64) + bd
    y = h + ACTIVATIONS[act][0](z) @ wu.T.astype(np.float64) + bu
    return y.reshape(x.shape[:-1] + (w.shape[0],))


def adapter_dense_grads(x, w, b, wd, bd, wu, bu, g, act="gelu"):
    """Gradients of sum(g * adapter_dense_forward) (no dense activation): dict of x, w, b, wd, bd, wu, bu."""
    x2 = x.reshape(-1, x.shape[-1]).astype(np.float64)
    g2 = g.reshape(-1, g.shape[-1]).astype(np.float64)
    w, wd, wu = (m.astype(np.float64) for m in (w, wd, wu))
    h = x2 @ w.T + (0.0 if b is None else b)
    z = h @ wd.T + bd
    a = ACTIVATIONS[act][0](z)
    dz = (g2 @ wu) * ACTIVATIONS[act][1](z)
    dh = g2 + dz @ wd
    return {"x": (dh @ w).reshape(x.shape), "w": dh.T @ x2, "b": dh.sum(0), "wd": dz.T @ h, "bd": dz.sum(0),
            "wu": g2.T @ a, "bu": g2.sum(0)}


def low_rank_factor_grads(d_weight_out_in, left, right):
    """Gradients of the factors of W = (L·R)ᵀ ([out, in]) from the gradient of W: (dL, dR)."""
    dm = d_weight_out_in.T  # [in, out], the gradient of L·R
    return dm @ right.T.astype(np.float64), left.T.astype(np.float64) @ dm


def prefix_mlp_forward(e, w1, b1, w2, b2):
    """W2·tanh(W1·e + b1) + b2 per row of e ([P, embed]), float64."""
    return np.tanh(e.astype(np.float64) @ w1.T + b1) @ w2.T + b2


def prefix_mlp_grads(e, w1, b1, w2, b2, g):
    """Gradients of sum(g * prefix_mlp_forward): (de, dw1, db1, dw2, db2)."""
    e = e.astype(np.float64)
    t = np.tanh(e @ w1.T + b1)
    dt = (g @ w2) * (1.0 - t ** 2)
    return dt @ w1, dt.T @ e, dt.sum(0), g.T @ t, g.sum(0)


def rdrop_loss(logits, labels, alpha=4.0):
    """Mean cross-entropy over all rows + alpha/4 · (KL(p1‖p0) + KL(p0‖p1)) summed, rows 2i / 2i+1 paired."""
    logits = logits.astype(np.float64)
    logp = log_softmax(logits)
    ce = -logp[np.arange(len(labels)), labels].mean()
    l0, l1 = logp[0::2], logp[1::2]
    kl = (np.exp(l1) * (l1 - l0)).sum() + (np.exp(l0) * (l0 - l1)).sum()
    return ce + alpha / 4.0 * kl


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


def mcore_split_qkv(w, num_heads, num_groups, head_dim, contiguous=False):
    """q, k, v rows of a MindFormers mcore fused linear_qkv (weight or LoRA B), walked group by group:
    interleaved = per query group [its q heads | its k head | its v head]; contiguous = [Q; K; V]."""
    if contiguous:
        q_end, k_end = num_heads * head_dim, (num_heads + num_groups) * head_dim
        return w[:q_end], w[q_end:k_end], w[k_end:]
    rep = num_heads // num_groups
    q, k, v, pos = [], [], [], 0
    for _ in range(num_groups):
        q.append(w[pos:pos + rep * head_dim])
        pos += rep * head_dim
        k.append(w[pos:pos + head_dim])
        pos += head_dim
        v.append(w[pos:pos + head_dim])
        pos += head_dim
    return np.concatenate(q), np.concatenate(k), np.concatenate(v)


def mcore_split_fc1(w, interleaved=True):
    """gate, up rows of a MindFormers mcore fused linear_fc1: interleaved = alternate rows; else halves."""
    if interleaved:
        return w[0::2], w[1::2]
    half = w.shape[0] // 2
    return w[:half], w[half:]
