"""The model: the paper's seven shapes, the per-layer arithmetic, and the block's numerics."""
import math
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F

from conftest import ROOT
from lws import (GPT, KVCache, LWSConfig, apply_rope, clean_state_dict, flops_per_token, layer_params,
                 make_divisible, read_config_file)

# Table 2 of the paper: (total, non-embedding) parameters in millions, and SPEC's per-layer shapes.
TABLE2 = {
    "baseline12": (181.1, 142.5, [3072] * 12, [12] * 12),
    "vanilla12": (178.8, 140.1, [1536, 1792, 2048, 2304, 2560, 2816, 2816, 3072, 3328, 3584, 3840, 4096],
                  [6, 9, 9, 12, 12, 15, 15, 18, 18, 21, 21, 24]),
    "baseline18": (183.5, 144.8, [2048] * 18, [9] * 18),
    "vanilla18": (179.7, 141.1, [768, 1024, 1024, 1280, 1280, 1536, 1536, 1792, 1792, 2048, 2048, 2304, 2304,
                                 2560, 2560, 2816, 2816, 3072], [6, 6] + [9] * 10 + [12] * 6),
    "framed": (179.4, 140.7, [3072, 512, 768, 1024, 1024, 1280, 1280, 1536, 1536, 1792, 2048, 2048, 2304, 2560,
                              2560, 2816, 2816, 3072], [12, 6] + [9] * 10 + [12] * 6),
    "reverse": (179.4, 140.7, [3072, 2816, 2816, 2560, 2560, 2304, 2048, 2048, 1792, 1536, 1536, 1280, 1280, 1024,
                               1024, 768, 512, 3072], [12] * 6 + [9] * 10 + [6, 12]),
    "crown": (181.9, 143.3, [3072, 768, 1024, 1280, 1536, 2048, 2304, 2560, 2816, 2816, 2560, 2304, 2048, 1536,
                             1280, 1024, 768, 3072], [12] + [9] * 5 + [12] * 6 + [9] * 5 + [12]),
}


def paper_config(name):
    return LWSConfig.from_dict(read_config_file(os.path.join(ROOT, "config", f"{name}.py")))


def tiny(schedule="crown", **kw):
    pts = {"crown": ((0.5, 4.0, 0.5), (0.5, 1.0, 0.5)), "isotropic": ((2.0, 2.0), (1.0, 1.0)),
           "vanilla": ((1.0, 4.0), (0.5, 1.0)), "framed": ((0.5, 4.0), (0.5, 1.0)),
           "reverse": ((4.0, 0.5), (1.0, 0.5))}.get(schedule, ((1.0, 1.0), (1.0, 1.0)))
    args = dict(schedule=schedule, n_layer=6, d_model=64, head_dim=16, q_per_kv=2, block_size=32,
                vocab_size=96, ffn_scale=pts[0], attn_scale=pts[1], ffn_multiple=32)
    args.update(kw)
    return LWSConfig(**args)


@pytest.mark.parametrize("name", TABLE2)
def test_paper_models_match_table2(name):
    total, non_emb, ffn, heads = TABLE2[name]
    cfg = paper_config(name)
    with torch.device("meta"):  # real modules and tensor shapes, no memory or init time
        model = GPT(cfg)
    assert round(model.num_params() / 1e6, 1) == total
    assert round(model.num_params(non_embedding=True) / 1e6, 1) == non_emb
    assert [b.ffn.w1.out_features for b in model.blocks] == ffn
    assert [b.attn.n_head for b in model.blocks] == heads
    assert [b.attn.n_kv_head for b in model.blocks] == [h // 3 for h in heads]
    assert [b.attn.k.out_features for b in model.blocks] == [h // 3 * 64 for h in heads]
    # the arithmetic the CLI view and the FLOP count use agrees with the real tensors
    arithmetic = sum(sum(layer_params(cfg, s)) for s in cfg.plan) + 2 * 50304 * 768 + 768
    assert arithmetic == model.num_params()


def test_framed_layer_one_keeps_the_eighteen_layer_slope():
    plan = paper_config("framed").plan
    assert (plan[0].beta, plan[-1].beta) == (4.0, 4.0)
    assert plan[1].beta == 0.71  # linspace(0.5, 4.0, 18)[1] rounded, not the 0.5 start point
    crown = paper_config("crown").plan
    assert crown[8].beta == crown[9].beta == 3.8  # even depth: a two-layer-wide peak


def test_make_divisible_edges():
    assert make_divisible(512, 256) == 512          # already a multiple
    assert make_divisible(640, 256) == 768          # 2.5 multiples rounds half UP (banker's round gives 512)
    assert round(640 / 256) * 256 == 512
    assert make_divisible(600, 256) == 768          # 512 would shrink it by 15%: the 10% guard adds a step
    assert make_divisible(620, 256) == 768
    assert make_divisible(300, 256) == 512          # 256 would lose 14.7% (< 0.9 * 300): one step up
    assert make_divisible(10, 256) == 256           # never below the minimum
    assert make_divisible(0.75 * 768, 192) == 576   # baseline18's attention: 9 heads of 64


@pytest.mark.parametrize("kwargs, message", [
    (dict(schedule="crwn"), "unknown schedule 'crwn': choose one of isotropic, vanilla, framed, reverse, crown"),
    (dict(schedule="vanilla", ffn_scale=(1, 2, 1)), "ffn_scale=(1, 2, 1) has 3 points, but schedule 'vanilla' takes 2"),
    (dict(schedule="crown", attn_scale=(0.5, 1.0)), "attn_scale=(0.5, 1.0) has 2 points, but schedule 'crown' takes 3"),
    (dict(schedule="isotropic", ffn_scale=(1, 4)), "isotropic needs start == end"),
    (dict(ffn_widths=[256] * 5), "ffn_widths has 5 entries; it needs n_layer=6"),
    (dict(n_heads=[4, 4, 3, 4, 4, 4]), "n_heads [3] not divisible by q_per_kv=2"),
    (dict(n_heads=[4] * 7), "n_heads has 7 entries; it needs n_layer=6"),
    (dict(attn_multiple=48), "attn_multiple=48 must be a multiple of q_per_kv*head_dim=32"),
])
def test_bad_config_fails_at_construction_with_one_line(kwargs, message):
    with pytest.raises(ValueError) as e:
        tiny(**kwargs)
    assert message in str(e.value) and "\n" not in str(e.value)


def test_explicit_per_layer_lists_replace_the_schedule():
    cfg = tiny(ffn_widths=[64, 128, 192, 256, 320, 384], n_heads=[2, 4, 6, 8, 6, 4])
    model = GPT(cfg)
    assert [b.ffn.w1.out_features for b in model.blocks] == [64, 128, 192, 256, 320, 384]
    assert [(b.attn.n_head, b.attn.n_kv_head) for b in model.blocks] == [(2, 1), (4, 2), (6, 3), (8, 4), (6, 3), (4, 2)]
    x = torch.randint(0, 96, (2, 16))
    assert model(x, x)[1].isfinite()


def test_flops_count_causal_attention_and_every_matmul():
    cfg = paper_config("baseline12")
    f = flops_per_token(cfg, seq_len=1024)
    matmul = 12 * (768 * (2 * 768 + 2 * 256) + 3 * 768 * 3072)
    attn = 12 * 12 * 64 * 1024 * 6  # 12 FLOPs per (head dim, key) over an average of T/2 keys
    assert f["total"] == 6 * matmul + attn + 6 * 768 * 50304
    assert len(f["layers"]) == 12 and len(set(f["layers"])) == 1
    crown = flops_per_token(paper_config("crown"))
    assert crown["layers"][0] > crown["layers"][1] < crown["layers"][8]  # heterogeneous per layer


def test_causality():
    torch.manual_seed(0)
    model = GPT(tiny()).eval()
    x = torch.randint(0, 96, (1, 24))
    y = x.clone()
    y[0, 15:] = (y[0, 15:] + 1) % 96  # change every token from position 15 on
    with torch.no_grad():
        a, b = model(x, x)[0], model(y, y)[0]
    assert torch.equal(a[0, :15], b[0, :15])
    assert not torch.allclose(a[0, 15:], b[0, 15:])


def test_attention_matches_a_plain_reference():
    torch.manual_seed(0)
    cfg = tiny(n_heads=[6] * 6)
    attn = GPT(cfg).blocks[0].attn
    B, T, H, KV, D = 3, 20, 6, 3, 16
    x = torch.randn(B, T, 64)
    cos, sin = GPT(cfg).rope_cos[:T], GPT(cfg).rope_sin[:T]
    # reference: explicit RMSNorm, RoPE by complex rotation, K/V repeated per group, explicit mask
    def rms(t, w):
        return t * torch.rsqrt(t.pow(2).mean(-1, keepdim=True) + 1e-6) * w
    q = rms(x @ attn.q.weight.T, attn.q_norm.weight).view(B, T, H, D).transpose(1, 2)
    k = rms(x @ attn.k.weight.T, attn.k_norm.weight).view(B, T, KV, D).transpose(1, 2)
    v = (x @ attn.v.weight.T).view(B, T, KV, D).transpose(1, 2)
    freqs = 1.0 / 500000.0 ** (torch.arange(0, D, 2).double() / D)
    rot = torch.polar(torch.ones(T, D // 2, dtype=torch.float64), torch.outer(torch.arange(T).double(), freqs))
    def rope(t):
        c = torch.complex(t[..., :D // 2].double(), t[..., D // 2:].double()) * rot
        return torch.cat([c.real, c.imag], -1).float()
    q, k = rope(q), rope(k)
    k, v = k.repeat_interleave(H // KV, dim=1), v.repeat_interleave(H // KV, dim=1)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(D)
    scores = scores.masked_fill(torch.triu(torch.ones(T, T, dtype=torch.bool), 1), float("-inf"))
    ref = (scores.softmax(-1) @ v).transpose(1, 2).reshape(B, T, H * D) @ attn.o.weight.T
    with torch.no_grad():
        out = attn(x, cos, sin)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    # and apply_rope is a pure rotation: norms are preserved
    t = torch.randn(2, 3, T, D)
    torch.testing.assert_close(apply_rope(t, cos, sin).norm(dim=-1), t.norm(dim=-1))


@pytest.mark.parametrize("schedule", ["crown", "reverse"])
def test_kv_cache_decoding_equals_full_forward(schedule):
    torch.manual_seed(0)
    model = GPT(tiny(schedule)).eval()
    x = torch.randint(0, 96, (2, 32))
    with torch.no_grad():
        full, _ = model(x, x)
        cache = KVCache(model, batch_size=2)
        # one token at a time
        steps = [model(x[:, t:t + 1], kv_cache=cache)[0][:, 0] for t in range(32)]
        # a prefill of 10 tokens, then a chunk of 7 (queries at pos > 0 with T > 1), then single tokens
        cache2 = KVCache(model, batch_size=2)
        a = model(x[:, :10], kv_cache=cache2)[0][:, 0]
        b = model(x[:, 10:17], kv_cache=cache2)[0][:, 0]
        c = model(x[:, 17:18], kv_cache=cache2)[0][:, 0]
    torch.testing.assert_close(torch.stack(steps, 1), full, atol=1e-5, rtol=1e-5)
    for got, pos in ((a, 9), (b, 16), (c, 17)):
        torch.testing.assert_close(got, full[:, pos], atol=1e-5, rtol=1e-5)
    assert [k.shape[1] for k in cache.k] == [blk.attn.n_kv_head for blk in model.blocks]
    with pytest.raises(ValueError, match="exceeds block_size=32"):
        model(x[:, :1], kv_cache=cache)


@pytest.mark.parametrize("schedule", ["isotropic", "vanilla", "framed", "reverse", "crown"])
def test_every_schedule_overfits_one_batch(schedule):
    torch.manual_seed(0)
    model = GPT(tiny(schedule))
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    x = torch.randint(0, 96, (4, 32))
    y = torch.roll(x, -1, dims=1)
    losses = []
    for _ in range(40):
        _, loss = model(x, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[0] > math.log(96) - 0.5  # starts near uniform over the vocabulary
    assert losses[-1] < 0.25 * losses[0]


def test_compiled_model_matches_eager_and_saves_clean_keys():
    torch.manual_seed(0)
    model = GPT(tiny())
    compiled = torch.compile(model)
    x = torch.randint(0, 96, (2, 32))
    with torch.no_grad():
        eager_logits, eager_loss = model(x, x)
        comp_logits, comp_loss = compiled(x, x)
    torch.testing.assert_close(comp_logits, eager_logits, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(comp_loss, eager_loss, atol=1e-4, rtol=1e-4)
    # compile and DDP prefix every key; clean_state_dict strips both so a plain GPT loads it strictly
    sd = compiled.state_dict()
    assert all(k.startswith("_orig_mod.") for k in sd)
    wrapped = {"module." + k: v for k, v in sd.items()}
    plain = GPT(tiny())
    plain.load_state_dict(clean_state_dict(wrapped), strict=True)
    with torch.no_grad():
        assert torch.equal(plain(x, x)[0], eager_logits)


def test_cli_prints_the_schedule_layer_by_layer():
    out = subprocess.run([sys.executable, "lws.py", "config/crown.py"], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.strip()[:1].isdigit()][:18]
    assert [int(r[3]) for r in rows] == TABLE2["crown"][2]
    assert [r[4] for r in rows] == [f"{h}/{h // 3}" for h in TABLE2["crown"][3]]
    assert "181.9M parameters (143.3M non-embedding)" in out
    bad = subprocess.run([sys.executable, "lws.py", "config/crown.py", "--schedule=crwn"], cwd=ROOT,
                         capture_output=True, text=True)
    assert bad.returncode != 0 and bad.stderr.strip().count("\n") == 0 and "unknown schedule" in bad.stderr
