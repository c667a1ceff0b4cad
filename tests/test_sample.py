"""sample.py: the KV cache changes nothing but the speed, loading is strict and safe, the CLI is
reproducible."""
import os
import pickle
import subprocess
import sys

import pytest
import torch

import sample
from conftest import ROOT
from lws import GPT, LWSConfig

SHAPES = {"crown": ((0.5, 4.0, 0.5), (0.5, 1.0, 0.5)), "isotropic": ((2.0, 2.0), (1.0, 1.0)),
          "vanilla": ((1.0, 4.0), (0.5, 1.0)), "framed": ((0.5, 4.0), (0.5, 1.0)), "reverse": ((4.0, 0.5), (1.0, 0.5))}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Decoding is hundreds of tiny ops: with two threads on a shared 2-core machine every op waits
    # on a busy core (10x slower here). One thread is faster and leaves a core to the others.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def tiny(schedule="crown", vocab_size=512, block_size=64, **kw):
    # init_std 0.3 instead of 0.02: a random model whose logits depend clearly on the context, so
    # a cache bug changes the greedy tokens instead of hiding in near-ties.
    return LWSConfig(schedule=schedule, n_layer=4, d_model=64, head_dim=16, q_per_kv=2, block_size=block_size,
                     vocab_size=vocab_size, ffn_scale=SHAPES[schedule][0], attn_scale=SHAPES[schedule][1],
                     ffn_multiple=32, init_std=0.3, **kw)


def model_of(cfg, seed=0):
    torch.manual_seed(seed)
    return GPT(cfg).eval()


def save_ckpt(path, net, **extra):
    ckpt = {"format": "lws-checkpoint", "version": 1, "model": net.state_dict(),
            "model_config": net.cfg.to_dict(), "config": {"lr": 1e-3}, "step": 7, "tokens_seen": 100,
            "val_loss": 5.5, "best_val_loss": 5.5, "optimizer": {}, "loader": {}, "rng": {}}
    ckpt.update(extra)
    torch.save(ckpt, path)
    return path


def exits_with(match, fn, *args):
    with pytest.raises(SystemExit) as e:
        fn(*args)
    msg = str(e.value)
    assert msg.startswith("error: ") and "\n" not in msg, msg
    assert match in msg, msg
    return msg


@pytest.mark.parametrize("schedule", list(SHAPES))
def test_greedy_with_cache_equals_without(schedule):
    model = model_of(tiny(schedule))
    x = torch.randint(0, 512, (2, 5), generator=torch.Generator().manual_seed(1))
    a = sample.generate(model, x, 50, temperature=0, n_vocab=512)  # 55 tokens: within the context
    b = sample.generate(model, x, 50, temperature=0, n_vocab=512, use_cache=False)
    assert a.shape == (2, 55) and torch.equal(a[:, :5], x)
    assert torch.equal(a, b)
    assert len(set(a[0, 5:].tolist())) > 5  # a real sequence, not one token repeated


@pytest.mark.parametrize("prompt_len", [10, 80])  # 80: a prompt longer than the context of 64
def test_past_the_context_the_window_slides(prompt_len, capsys):
    model = model_of(tiny("reverse"))
    prefills = []
    model.register_forward_pre_hook(lambda m, args: prefills.append(args[0].size(1)) if args[0].size(1) > 1 else None)
    x = torch.randint(0, 512, (1, prompt_len), generator=torch.Generator().manual_seed(2))
    a = sample.generate(model, x, 120, temperature=0, n_vocab=512)
    err = capsys.readouterr().err
    assert a.shape == (1, prompt_len + 120) and torch.equal(a[:, :prompt_len], x)
    assert err.count("note:") == 1 and "context of 64" in err  # said once, though it slides often
    # the prompt (cropped to 64), then a re-prefill of the last 32 tokens whenever the cache is full
    assert prefills[0] == min(prompt_len, 64) and set(prefills[1:]) == {32} and len(prefills) >= 3
    # the no-cache path crops to the same window, so the tokens are the same
    assert torch.equal(a, sample.generate(model, x, 120, temperature=0, n_vocab=512, use_cache=False, verbose=False))


def test_sampling_is_seeded_and_the_same_with_or_without_cache():
    model = model_of(tiny("crown", block_size=32))
    x = torch.zeros(2, 3, dtype=torch.long)
    run = lambda seed, **kw: sample.generate(model, x, 40, temperature=1.0, top_k=50, top_p=0.9, n_vocab=512,
                                             generator=torch.Generator().manual_seed(seed), verbose=False, **kw)
    assert torch.equal(run(1), run(1))
    assert torch.equal(run(1), run(1, use_cache=False))
    assert not torch.equal(run(1), run(2))


def test_eos_ends_generation_and_tokens_are_streamed():
    model = model_of(tiny("framed"))
    x = torch.tensor([[1, 2, 3]])
    full = sample.generate(model, x, 10, temperature=0, n_vocab=512)
    eos = full[0, 5].item()  # the third new token
    first = full[0, 3:].tolist().index(eos)
    seen = []
    out = sample.generate(model, x, 10, temperature=0, n_vocab=512, eos=eos, on_token=lambda t: seen.append(t.item()))
    assert out[0, 3:].tolist() == seen == full[0, 3:4 + first].tolist()


def test_never_samples_a_padding_id():
    # The padded rows 50257..50303 are made to win by far; they must still never come out.
    model = model_of(tiny("isotropic", vocab_size=50304))
    model.lm_head.register_forward_hook(lambda m, i, out: torch.cat((out[..., :50257], out[..., 50257:] + 50), -1))
    x = torch.tensor([[15496, 995]])
    assert model(x)[0][0, -1].argmax() >= 50257  # they really would win
    for kw in ({"temperature": 0}, {"temperature": 1.0}, {"temperature": 2.0, "top_p": 0.99}):
        out = sample.generate(model, x, 20, generator=torch.Generator().manual_seed(0), **kw)
        assert out.max() < 50257


def test_top_k_and_top_p_restrict_the_choice():
    logits = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.05, 0.15, 0.3, 0.5]]).log()
    kept = lambda **kw: torch.isfinite(sample.filter_logits(logits, **kw)).tolist()
    assert kept() == [[True] * 4] * 2
    assert kept(top_k=2) == [[True, True, False, False], [False, False, True, True]]
    assert kept(top_p=0.45) == [[True, False, False, False], [False, False, False, True]]  # the top token always
    assert kept(top_p=0.75) == [[True, True, False, False], [False, False, True, True]]   # 0.5 < 0.75 <= 0.8
    assert kept(top_p=0.9) == [[True, True, True, False], [False, True, True, True]]
    assert kept(top_k=3, top_p=0.75) == kept(top_p=0.75) and kept(top_k=1) == kept(top_p=0.01)

    class Fixed(torch.nn.Module):  # a "model" whose next-token distribution is always [.5 .3 .15 .05]
        cfg = LWSConfig(block_size=8, vocab_size=4)

        def forward(self, idx):
            return logits[:1, None].expand(idx.size(0), idx.size(1), 4), None

    drawn = lambda **kw: set(sample.generate(Fixed(), torch.zeros(1, 1, dtype=torch.long), 300, use_cache=False,
                                             generator=torch.Generator().manual_seed(0), n_vocab=4, verbose=False,
                                             **kw)[0, 1:].tolist())
    assert drawn() == {0, 1, 2, 3}
    assert drawn(top_k=2) == drawn(top_p=0.75) == {0, 1}
    assert drawn(top_k=3) == drawn(top_p=0.9) == {0, 1, 2}
    assert drawn(top_p=0.45) == drawn(temperature=0) == {0}
    # sampling with top_k=1 is greedy decoding
    model = model_of(tiny("vanilla"))
    x = torch.tensor([[7, 8]])
    assert torch.equal(sample.generate(model, x, 15, temperature=1.3, top_k=1, n_vocab=512),
                       sample.generate(model, x, 15, temperature=0, n_vocab=512))


def test_loads_compiled_and_ddp_prefixed_keys(tmp_path):
    model = model_of(tiny("crown"))
    prefixes = ("module._orig_mod.", "_orig_mod.")  # DDP around a compiled model, and compiled alone
    sd = {prefixes[i % 2] + k: v for i, (k, v) in enumerate(model.state_dict().items())}
    path = save_ckpt(tmp_path / "ckpt_last.pt", model, model=sd)
    loaded, ckpt = sample.load_model(str(tmp_path), "cpu")  # a folder: finds ckpt_last.pt
    assert ckpt["step"] == 7 and not loaded.training and loaded.cfg.to_dict() == model.cfg.to_dict()
    for k, v in model.state_dict().items():
        assert torch.equal(loaded.state_dict()[k], v)
    # a folder with both prefers the best checkpoint
    save_ckpt(tmp_path / "ckpt_best.pt", model, step=5)
    assert sample.load_model(str(tmp_path))[1]["step"] == 5
    assert sample.load_model(str(path))[1]["step"] == 7


class Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):  # unpickling this runs a shell command
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("how", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path, how):
    marker, path = tmp_path / "pwned", tmp_path / "ckpt_best.pt"
    ckpt = {"format": "lws-checkpoint", "version": 1, "model": {"x": Payload(marker)}}
    if how == "pickle":
        with open(path, "wb") as f:
            pickle.dump(ckpt, f)
    else:
        torch.save(ckpt, path)
    exits_with("unsafe unpickling", sample.load_model, str(tmp_path))
    assert not marker.exists()


def test_missing_or_foreign_checkpoints_are_explained(tmp_path):
    exits_with("is empty", sample.load_model, str(tmp_path))
    (tmp_path / "notes.txt").write_text("hi")
    (tmp_path / "ckpt_0100.pt").write_bytes(b"")
    msg = exits_with("no ckpt_best.pt or ckpt_last.pt in", sample.load_model, str(tmp_path))
    assert "ckpt_0100.pt, notes.txt" in msg
    msg = exits_with("no checkpoint at", sample.load_model, str(tmp_path / "ckpt_last.pt"))
    assert "ckpt_0100.pt, notes.txt" in msg
    exits_with("does not exist", sample.load_model, str(tmp_path / "nowhere" / "ckpt_last.pt"))
    # files that are not this project's checkpoints
    model = model_of(tiny("crown"))
    torch.save(model.state_dict(), tmp_path / "bare.pt")
    exits_with("not a checkpoint of this project: no 'format': 'lws-checkpoint' (a bare state dict",
               sample.load_model, str(tmp_path / "bare.pt"))
    exits_with("not a checkpoint of this project", sample.load_model, str(tmp_path / "notes.txt"))
    exits_with("not a checkpoint of this project", sample.load_model, str(tmp_path / "ckpt_0100.pt"))
    # a project checkpoint whose weights do not fit its config
    save_ckpt(tmp_path / "bad.pt", model, model_config=tiny("crown", n_heads=[6, 6, 6, 6]).to_dict())
    exits_with("cannot rebuild the model", sample.load_model, str(tmp_path / "bad.pt"))


def cli(*args, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONIOENCODING="utf-8")
    return subprocess.run([sys.executable, os.path.join(ROOT, "sample.py"), *args], capture_output=True,
                          text=True, env=env, cwd=tmp_path, timeout=120)


def test_cli_same_seed_same_text(tmp_path, capsys, monkeypatch):
    save_ckpt(tmp_path / "ckpt_best.pt", model_of(tiny("crown", vocab_size=50304, block_size=32)))
    (tmp_path / "prompt.txt").write_text("Once upon a time, in a café,")
    args = ["--out_dir", str(tmp_path), "--start=FILE:prompt.txt", "--num_samples=2", "--max_new_tokens=30",
            "--top_p=0.95", "--top_k=None"]
    r = cli(*args, "--seed=7", tmp_path=tmp_path)  # the real CLI, real GPT-2 tokenizer
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("Once upon a time, in a café,") == 2 and r.stdout.count("\n---------------\n") == 2
    assert "crown, 4 layers" in r.stderr and r.stderr.count("note:") == 1  # 9 + 30 tokens > context 32
    first, second = r.stdout.split("\n---------------\n")[:2]
    assert first.strip() != second.strip()  # two samples, not one twice
    monkeypatch.chdir(tmp_path)  # FILE: paths are relative to the working directory
    sample.main(args + ["--seed=7"])  # in-process, to save a second start-up of torch
    same = capsys.readouterr().out
    sample.main(args + ["--seed", "8"])
    other = capsys.readouterr().out
    assert same == r.stdout
    assert other != same


def test_cli_refuses_bad_files_in_one_line(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"format": "lws-checkpoint", "model": Payload(marker)}, tmp_path / "evil.pt")
    r = cli("--ckpt", str(tmp_path / "evil.pt"), tmp_path=tmp_path)
    assert r.returncode == 1 and r.stdout == ""
    assert r.stderr.startswith("error: refusing") and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert not marker.exists()
