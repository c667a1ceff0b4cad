"""
lws.py: the whole model. A GPT whose blocks each have their own FFN width and
number of attention heads (layer-wise scaling, LWS), with the isotropic baseline
and the four schedules of "Crown, Frame, Reverse: Layer-Wise Scaling Variants
for LLM Pre-Training" (arXiv 2509.06518):

    isotropic  every block the same                         ▆▆▆▆▆▆▆▆
    vanilla    narrow -> wide (OpenELM)                     ▂▃▃▄▅▅▆▇
    framed     like vanilla, first and last block full-size ▆▂▃▄▅▅▆▆
    reverse    wide -> narrow, framed                       ▆▇▆▅▄▃▂▆
    crown      narrow -> wide in the middle -> narrow, framed ▆▂▄▆▆▄▂▆

Run `python lws.py config/crown.py` to see a schedule layer by layer.
"""
import math
import sys
from dataclasses import asdict, dataclass, fields
from typing import NamedTuple, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

SCHEDULES = {  # name -> (number of interpolation points, framed?)
    "isotropic": (2, False),
    "vanilla": (2, False),
    "framed": (2, True),
    "reverse": (2, True),
    "crown": (3, True),
}


@dataclass
class LWSConfig:
    schedule: str = "isotropic"
    n_layer: int = 12
    d_model: int = 768
    head_dim: int = 64
    q_per_kv: int = 3            # query heads sharing one key/value head (grouped-query attention)
    block_size: int = 1024       # context length
    vocab_size: int = 50304      # GPT-2's 50257 tokens padded to a multiple of 128
    # beta (FFN width / d_model) and alpha (attention width / d_model) across depth:
    # (start, end) for two-point schedules, (start, mid, end) for crown.
    ffn_scale: tuple = (4.0, 4.0)
    attn_scale: tuple = (1.0, 1.0)
    ffn_multiple: int = 256      # FFN widths are rounded to a multiple of this
    attn_multiple: int = 0       # attention widths too; 0 means q_per_kv * head_dim (whole KV groups)
    frame_ffn: float = 4.0       # the block that framed schedules put first and last
    frame_attn: float = 1.0
    # Explicit per-layer shapes: any shape the schedules can't express. They replace the schedule.
    ffn_widths: Optional[list] = None
    n_heads: Optional[list] = None   # query heads per layer; KV heads are n_heads // q_per_kv
    rope_theta: float = 500000.0
    norm_eps: float = 1e-6
    init_std: float = 0.02

    def __post_init__(self):
        self.plan = layer_plan(self)  # validates everything once, at construction

    @classmethod
    def from_dict(cls, d):
        """Build from a config namespace, keeping only the model's keys (train configs hold more)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def to_dict(self):
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in asdict(self).items()}


# ----------------------------------------------------------------------------------------------
# The per-layer arithmetic. It reproduces the paper's Table 2 parameter counts to 0.1M, which is
# how we know these are the rules its released code really used.

class LayerShape(NamedTuple):
    beta: float      # FFN scale before rounding
    alpha: float     # attention scale before rounding
    d_ffn: int
    n_head: int
    n_kv_head: int


def make_divisible(v, div):
    """Round v to a multiple of div, half up, never below div, never shrinking v by more than 10%.
    (Hardware likes multiples of 64/128/256; the 10% guard keeps small layers from collapsing.)"""
    r = max(div, int(v + div / 2) // div * div)
    if r < 0.9 * v:
        r += div
    return r


def _interpolate(points, n, name):
    if len(points) == 2:
        # linspace over depth, then two decimals: the rounding is part of the paper's recipe
        # (e.g. vanilla18's second layer gets beta 1.18, not 1.176...).
        return [round(float(x), 2) for x in np.linspace(points[0], points[1], n)]
    # three points (crown): rise to `mid` at the centre and fall back, no rounding. With even n
    # the peak is two layers wide (layers n/2-1 and n/2), with odd n it is the single middle layer.
    start, mid, end = points
    if n % 2 == 0:
        xs, ys = [0, n / 2 - 1, n / 2, n - 1], [start, mid, mid, end]
    else:
        xs, ys = [0, math.ceil(n / 2) - 1, n - 1], [start, mid, end]
    return [float(np.interp(i, xs, ys)) for i in range(n)]


def layer_plan(cfg):
    """The shape of every block: a list of LayerShape, one per layer."""
    n, g = cfg.n_layer, cfg.q_per_kv
    if cfg.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {cfg.schedule!r}: choose one of {', '.join(SCHEDULES)}")
    if n < 1 or cfg.d_model < 1 or cfg.head_dim < 1 or g < 1:
        raise ValueError("n_layer, d_model, head_dim and q_per_kv must all be positive")
    npts, framed = SCHEDULES[cfg.schedule]
    for key in ("ffn_scale", "attn_scale"):
        pts = getattr(cfg, key)
        if len(pts) != npts:
            raise ValueError(f"{key}={tuple(pts)} has {len(pts)} points, but schedule {cfg.schedule!r} "
                             f"takes {npts}: " + ("(start, mid, end)" if npts == 3 else "(start, end)"))
    if cfg.schedule == "isotropic" and (len(set(cfg.ffn_scale)) > 1 or len(set(cfg.attn_scale)) > 1):
        raise ValueError(f"isotropic needs start == end, got ffn_scale={tuple(cfg.ffn_scale)}, "
                         f"attn_scale={tuple(cfg.attn_scale)}: use schedule 'vanilla' for a slope")
    betas = _interpolate(cfg.ffn_scale, n, "ffn_scale")
    alphas = _interpolate(cfg.attn_scale, n, "attn_scale")
    if framed:
        # Framing: the first and last blocks are full-size, after interpolating over all n layers,
        # so the slope in between keeps its n-layer steps (framed layer 1 has beta 0.71, not 0.5).
        betas[0] = betas[-1] = cfg.frame_ffn
        alphas[0] = alphas[-1] = cfg.frame_attn
    # Attention widths are rounded to whole KV groups (q_per_kv heads of head_dim), so every layer
    # keeps exactly q_per_kv query heads per KV head, and the number of KV heads varies with depth.
    attn_div = cfg.attn_multiple or g * cfg.head_dim
    if attn_div % (g * cfg.head_dim):
        raise ValueError(f"attn_multiple={attn_div} must be a multiple of q_per_kv*head_dim="
                         f"{g * cfg.head_dim} so every layer has whole KV groups")
    d_ffn = [make_divisible(b * cfg.d_model, cfg.ffn_multiple) for b in betas]
    heads = [make_divisible(a * cfg.d_model, attn_div) // cfg.head_dim for a in alphas]
    if cfg.ffn_widths is not None:
        if len(cfg.ffn_widths) != n or min(cfg.ffn_widths) < 1:
            raise ValueError(f"ffn_widths has {len(cfg.ffn_widths)} entries; it needs n_layer={n} positive widths")
        d_ffn = [int(w) for w in cfg.ffn_widths]
        betas = [w / cfg.d_model for w in d_ffn]
    if cfg.n_heads is not None:
        if len(cfg.n_heads) != n:
            raise ValueError(f"n_heads has {len(cfg.n_heads)} entries; it needs n_layer={n}")
        bad = [h for h in cfg.n_heads if h < 1 or h % g]
        if bad:
            raise ValueError(f"n_heads {bad} not divisible by q_per_kv={g}: use multiples of {g}")
        heads = [int(h) for h in cfg.n_heads]
        alphas = [h * cfg.head_dim / cfg.d_model for h in heads]
    return [LayerShape(b, a, f, h, h // g) for b, a, f, h in zip(betas, alphas, d_ffn, heads)]


def layer_params(cfg, s):
    """Parameters of one block: q, k, v, o and the three SwiGLU matrices, plus four norm weights."""
    q, kv = s.n_head * cfg.head_dim, s.n_kv_head * cfg.head_dim
    matmul = cfg.d_model * (2 * q + 2 * kv) + 3 * cfg.d_model * s.d_ffn
    norms = q + kv + 2 * cfg.d_model  # QK-norm over the whole q and k projections, two block norms
    return matmul, norms


def flops_per_token(cfg, seq_len=None):
    """Training FLOPs per token (forward + backward = 3x forward), per layer and in total.
    Each matmul weight costs 6 FLOPs per token. Attention scores and the weighted sum of values
    cost 2 * 2 * n_head * head_dim FLOPs per key in the forward pass; causal attention sees on
    average seq_len / 2 keys, and that is what we count (the masked half is no useful work)."""
    T = seq_len or cfg.block_size
    per_layer = []
    for s in cfg.plan:
        matmul, _ = layer_params(cfg, s)
        per_layer.append(6 * matmul + 3 * 4 * s.n_head * cfg.head_dim * (T / 2))
    head = 6 * cfg.d_model * cfg.vocab_size  # the LM head is a matmul too; the embedding is a lookup
    return {"layers": per_layer, "head": head, "total": sum(per_layer) + head}


# ----------------------------------------------------------------------------------------------
# The model: OLMo-2 style blocks (reordered norms, QK-norm, SwiGLU, RoPE), no biases, no dropout.

def rope_tables(head_dim, length, theta):
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(length, dtype=torch.float64), inv_freq)
    return angles.cos().float(), angles.sin().float()  # (length, head_dim/2) each


def apply_rope(x, cos, sin):
    # Rotate pairs (x1[i], x2[i]) of the two halves of each head by a position-dependent angle,
    # so that q.k depends only on the distance between positions. Done in fp32 for accuracy.
    x1, x2 = x.float().chunk(2, dim=-1)
    return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg, n_head, n_kv_head):
        super().__init__()
        self.n_head, self.n_kv_head, self.head_dim = n_head, n_kv_head, cfg.head_dim
        q, kv = n_head * cfg.head_dim, n_kv_head * cfg.head_dim
        self.q = nn.Linear(cfg.d_model, q, bias=False)
        self.k = nn.Linear(cfg.d_model, kv, bias=False)
        self.v = nn.Linear(cfg.d_model, kv, bias=False)
        self.o = nn.Linear(q, cfg.d_model, bias=False)  # maps this layer's width back to d_model
        # QK-norm over the whole projection (not per head), as OLMo-2: keeps logits tame at lr 6e-4.
        self.q_norm = nn.RMSNorm(q, eps=cfg.norm_eps)
        self.k_norm = nn.RMSNorm(kv, eps=cfg.norm_eps)

    def forward(self, x, cos, sin, kv_cache=None):
        B, T, _ = x.shape
        q = self.q_norm(self.q(x)).view(B, T, self.n_head, self.head_dim).transpose(1, 2)
        k = self.k_norm(self.k(x)).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        v = self.v(x).view(B, T, self.n_kv_head, self.head_dim).transpose(1, 2)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        mask, causal = None, True
        if kv_cache is not None:  # decoding: append to this layer's cache, attend to all of it
            k_buf, v_buf, pos = kv_cache
            k_buf[:, :, pos:pos + T], v_buf[:, :, pos:pos + T] = k, v
            k, v = k_buf[:, :, :pos + T], v_buf[:, :, :pos + T]
            if pos > 0:  # queries sit at pos..pos+T-1: query i sees keys 0..pos+i
                causal = False
                mask = torch.ones(T, pos + T, dtype=torch.bool, device=x.device).tril(pos) if T > 1 else None
        # enable_gqa lets each group of q_per_kv query heads share a KV head without copying K and V.
        y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal, enable_gqa=True)
        return self.o(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, d_model, d_ffn):
        super().__init__()
        self.w1 = nn.Linear(d_model, d_ffn, bias=False)  # gate
        self.w3 = nn.Linear(d_model, d_ffn, bias=False)  # value
        self.w2 = nn.Linear(d_ffn, d_model, bias=False)  # back to d_model

    def forward(self, x):
        return self.w2(F.silu(self.w1(x)) * self.w3(x))


class Block(nn.Module):
    def __init__(self, cfg, shape):
        super().__init__()
        self.attn = Attention(cfg, shape.n_head, shape.n_kv_head)
        self.ffn = SwiGLU(cfg.d_model, shape.d_ffn)
        self.attn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.ffn_norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)

    def forward(self, x, cos, sin, kv_cache=None):
        # OLMo-2's "reordered" norms: normalise each sublayer's output before adding it to the
        # residual stream, instead of normalising its input (pre-LN). The stream stays unnormalised.
        h = x + self.attn_norm(self.attn(x, cos, sin, kv_cache))
        return h + self.ffn_norm(self.ffn(h))


class KVCache:
    """Keys and values of past positions for incremental decoding. Layer i holds its own number
    of KV heads, so the buffers differ in shape from layer to layer."""

    def __init__(self, model, batch_size, max_len=None, device=None, dtype=torch.float32):
        cfg = model.cfg
        self.max_len = max_len or cfg.block_size
        shapes = [(batch_size, s.n_kv_head, self.max_len, cfg.head_dim) for s in cfg.plan]
        self.k = [torch.zeros(s, device=device, dtype=dtype) for s in shapes]
        self.v = [torch.zeros(s, device=device, dtype=dtype) for s in shapes]
        self.pos = 0  # number of positions already cached

    def reset(self):
        self.pos = 0  # the buffers are simply overwritten from position 0 on

    def layer(self, i):
        return self.k[i], self.v[i], self.pos


class GPT(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.cfg = cfg
        self.wte = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg, s) for s in cfg.plan)
        self.norm = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)  # untied from wte
        cos, sin = rope_tables(cfg.head_dim, cfg.block_size, cfg.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)  # derived, so not in the state dict
        self.register_buffer("rope_sin", sin, persistent=False)
        for m in self.modules():  # every matrix and the embedding: N(0, 0.02) cut at 3 std
            if isinstance(m, (nn.Linear, nn.Embedding)):
                nn.init.trunc_normal_(m.weight, std=cfg.init_std, a=-3 * cfg.init_std, b=3 * cfg.init_std)

    def num_params(self, non_embedding=False):
        """As the paper's Table 2 counts: everything, or everything but the input embedding."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.wte.weight.numel() if non_embedding else n

    def forward(self, idx, targets=None, kv_cache=None):
        """idx (B, T) token ids -> (logits, loss). With targets: logits (B, T, vocab) and the mean
        cross-entropy (targets of -1 are ignored). Without: only the last position's logits,
        (B, 1, vocab), all that sampling needs. With a kv_cache the T new tokens follow the cached ones."""
        B, T = idx.shape
        pos = kv_cache.pos if kv_cache is not None else 0
        if pos + T > self.cfg.block_size:
            raise ValueError(f"sequence of {pos + T} tokens exceeds block_size={self.cfg.block_size}")
        cos, sin = self.rope_cos[pos:pos + T], self.rope_sin[pos:pos + T]
        x = self.wte(idx)
        for i, block in enumerate(self.blocks):
            x = block(x, cos, sin, kv_cache.layer(i) if kv_cache is not None else None)
        x = self.norm(x)
        if kv_cache is not None:
            kv_cache.pos += T
        if targets is None:
            x = x[:, -1:]  # the LM head is the biggest matmul: skip the positions nobody reads
        logits = self.lm_head(x)
        loss = None
        if targets is not None:
            loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten(), ignore_index=-1)
        return logits, loss


def clean_state_dict(sd):
    """Strip the prefixes torch.compile ("_orig_mod.") and DDP ("module.") add to every key, so a
    state dict saved from a wrapped model loads into a plain GPT."""
    out = {}
    for k, v in sd.items():
        while k.startswith(("_orig_mod.", "module.")):
            k = k.split(".", 1)[1]
        out[k] = v
    return out


# ----------------------------------------------------------------------------------------------
# `python lws.py config/crown.py [--key=value ...]`: the schedule, layer by layer, from arithmetic
# alone (nothing is allocated, so the 180M models print instantly).

def read_config_file(path):
    """A config file is plain Python assignments (nanoGPT style); returns its public names."""
    ns = {}
    with open(path) as f:
        exec(compile(f.read(), path, "exec"), ns)
    return {k: v for k, v in ns.items() if not k.startswith("_") and not callable(v) and k != "__builtins__"}


def describe(cfg, seq_len=None):
    """A text table of the schedule: one row per layer, then the totals."""
    plan, flops = cfg.plan, flops_per_token(cfg, seq_len)
    max_ffn, max_heads = max(s.d_ffn for s in plan), max(s.n_head for s in plan)
    emb = cfg.vocab_size * cfg.d_model
    rows = [f"{cfg.schedule}: {cfg.n_layer} layers, d_model {cfg.d_model}, head_dim {cfg.head_dim}, "
            f"{cfg.q_per_kv} query heads per KV head, context {cfg.block_size}",
            f"{'layer':>5} {'beta':>5} {'alpha':>5} {'d_ffn':>6} {'q/kv':>6} {'params':>7} {'flops':>6}"
            f"  {'attention heads':<16}{'FFN width'}"]
    total_layers = 0
    for i, (s, f) in enumerate(zip(plan, flops["layers"])):
        matmul, norms = layer_params(cfg, s)
        total_layers += matmul + norms
        attn_bar = "▒" * round(14 * s.n_head / max_heads)
        ffn_bar = "█" * round(32 * s.d_ffn / max_ffn)
        rows.append(f"{i:>5} {s.beta:>5.2f} {s.alpha:>5.2f} {s.d_ffn:>6} {f'{s.n_head}/{s.n_kv_head}':>6} "
                    f"{(matmul + norms) / 1e6:>6.2f}M {100 * f / flops['total']:>5.1f}%  {attn_bar:<16}{ffn_bar}")
    total = 2 * emb + total_layers + cfg.d_model  # embedding, head, blocks, final norm
    rows += [f"blocks {total_layers / 1e6:.1f}M + embedding {emb / 1e6:.1f}M + LM head {emb / 1e6:.1f}M "
             f"+ final norm = {total / 1e6:.1f}M parameters ({(total - emb) / 1e6:.1f}M non-embedding)",
             f"training FLOPs per token at context {seq_len or cfg.block_size}: {flops['total'] / 1e9:.3f} G "
             f"(LM head {100 * flops['head'] / flops['total']:.1f}%)"]
    return "\n".join(rows)


if __name__ == "__main__":
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        sys.exit("usage: python lws.py config/<name>.py [--key=value ...]")
    import ast
    d = read_config_file(sys.argv[1])
    for arg in sys.argv[2:]:
        key, _, val = arg.lstrip("-").partition("=")
        try:
            d[key] = ast.literal_eval(val)
        except (ValueError, SyntaxError):
            d[key] = val
    try:
        print(describe(LWSConfig.from_dict(d)))
    except (ValueError, TypeError) as e:
        sys.exit(f"error: {e}")
