"""The trainer, end to end on the CPU: real GPT-2 tokens, real processes, real torchrun."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tiktoken
import torch
from pydoc_data.topics import topics

import train
from conftest import ROOT
from prepare_data import write_shard

# A model small enough for a 2-core CPU; config/tiny.py supplies the rest (crown, 2 query heads per KV).
MINI = ["--n_layer=4", "--d_model=32", "--head_dim=8", "--q_per_kv=2", "--block_size=64", "--ffn_multiple=16",
        "--eval_tokens=4096", "--log_interval=1", "--lr=2e-3", "--warmup_steps=2"]


def make_shards(folder, tokens, val, train_sizes):
    os.makedirs(folder, exist_ok=True)
    write_shard(os.path.join(folder, "t_val_000000.bin"), tokens[:val])
    at = val
    for i, n in enumerate(train_sizes, start=1):
        write_shard(os.path.join(folder, f"t_train_{i:06d}.bin"), tokens[at:at + n])
        at += n
    return folder


@pytest.fixture(scope="module")
def tokens():
    """Python's own language reference, tokenized with the real GPT-2 BPE: about 139K tokens."""
    enc = tiktoken.get_encoding("gpt2")
    out = []
    for key in sorted(topics):
        out.append(enc.eot_token)
        out.extend(enc.encode_ordinary(topics[key]))
    return np.array(out, dtype=np.uint16)


@pytest.fixture(scope="module")
def data(tokens, tmp_path_factory):
    return make_shards(str(tmp_path_factory.mktemp("data")), tokens, 20_000, [60_000, 59_000])


@pytest.fixture(scope="module")
def small_data(tokens, tmp_path_factory):
    """Two train shards of 20 windows each: an 8-window batch crosses an epoch every 5 steps."""
    return make_shards(str(tmp_path_factory.mktemp("small")), tokens, 5_000, [20 * 64 + 1, 20 * 64 + 1])


def run(args, launcher=(sys.executable,), check=True, **kw):
    env = dict(os.environ, OMP_NUM_THREADS="2")
    p = subprocess.run([*launcher, "train.py", "config/tiny.py", *MINI, *args], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=600, **kw)
    if check and p.returncode != 0:
        raise AssertionError(f"train.py failed ({p.returncode}):\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def metrics(out_dir):
    with open(os.path.join(out_dir, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f]
    return [r for r in rows if "loss" in r], [r for r in rows if "val_loss" in r]


def test_tiny_run_train_and_val_loss_fall(data, tmp_path):
    out = str(tmp_path / "run")
    run([f"--data_dir={data}", f"--out_dir={out}", "--max_steps=30", "--eval_interval=15",
         "--micro_batch=8", "--batch_tokens=512", "--lr=4e-3"])
    steps, evals = metrics(out)
    assert [e["step"] for e in evals] == [0, 15, 30]
    assert evals[-1]["val_loss"] < evals[0]["val_loss"] - 1.5   # starts near ln(50304) = 10.8
    assert np.mean([s["loss"] for s in steps[-5:]]) < np.mean([s["loss"] for s in steps[:5]]) - 1.5
    assert all(s["tok_s"] > 0 and s["mfu"] is None for s in steps)  # no invented CPU peak
    # checkpoints: safe to load, clean keys, everything a resume needs
    for name in ("ckpt_last.pt", "ckpt_best.pt"):
        ckpt = torch.load(os.path.join(out, name), weights_only=True)
        assert ckpt["format"] == "lws-checkpoint" and ckpt["step"] == 30
        assert not any(k.startswith(("_orig_mod.", "module.")) for k in ckpt["model"])
        assert ckpt["loader"]["seen"] == 30 * 8 and ckpt["tokens_seen"] == 30 * 512
        assert ckpt["config"]["d_model"] == 32 and ckpt["model_config"]["schedule"] == "crown"
    assert json.load(open(os.path.join(out, "config.json")))["max_steps"] == 30
    # and the trained model samples end to end
    s = subprocess.run([sys.executable, "sample.py", f"--out_dir={out}", "--start=The import statement",
                        "--num_samples=1", "--max_new_tokens=24", "--seed=1"], cwd=ROOT, capture_output=True,
                       text=True, timeout=120)
    assert s.returncode == 0, s.stderr
    assert s.stdout.startswith("The import statement") and len(s.stdout) > len("The import statement") + 24
    # never lose work: a new run into the same folder is refused
    p = run([f"--data_dir={data}", f"--out_dir={out}"], check=False)
    assert p.returncode == 2 and "already holds a run: pass --resume=true" in p.stderr


def test_resume_is_bit_exact_across_an_epoch_boundary(small_data, tmp_path):
    common = [f"--data_dir={small_data}", "--max_steps=12", "--eval_interval=6", "--micro_batch=4",
              "--batch_tokens=512", "--lr_schedule=cosine"]
    run(common + [f"--out_dir={tmp_path / 'straight'}"])
    run(common + [f"--out_dir={tmp_path / 'split'}", "--run_steps=7"])
    assert torch.load(tmp_path / "split" / "ckpt_last.pt", weights_only=True)["step"] == 7
    run(common + [f"--out_dir={tmp_path / 'split'}", "--resume=true"])
    a, a_val = metrics(tmp_path / "straight")
    b, b_val = metrics(tmp_path / "split")
    # 40 windows per epoch, 8 per step: epochs end after steps 5 and 10, on both sides of the stop
    assert [r["step"] for r in b] == list(range(1, 13))
    assert [r["loss"] for r in a] == [r["loss"] for r in b]
    assert [r["grad_norm"] for r in a] == [r["grad_norm"] for r in b]
    assert [r["val_loss"] for r in a_val] == [r["val_loss"] for r in b_val]


def test_two_ranks_and_accumulation_match_one_process(data, tmp_path):
    common = [f"--data_dir={data}", "--max_steps=4", "--eval_interval=4", "--batch_tokens=256"]
    run(common + [f"--out_dir={tmp_path / 'one'}", "--micro_batch=4"])          # 1 rank x 4 sequences
    run(common + [f"--out_dir={tmp_path / 'accum'}", "--micro_batch=1"])        # 1 rank x 4 micro-steps
    run(common + [f"--out_dir={tmp_path / 'ddp'}", "--micro_batch=2"],          # 2 ranks x 2 sequences
        launcher=(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"))
    one, one_val = metrics(tmp_path / "one")
    for other in ("accum", "ddp"):
        steps, val = metrics(tmp_path / other)
        np.testing.assert_allclose([r["loss"] for r in steps], [r["loss"] for r in one], rtol=1e-5)
        np.testing.assert_allclose([r["grad_norm"] for r in steps], [r["grad_norm"] for r in one], rtol=1e-4)
        np.testing.assert_allclose([r["val_loss"] for r in val], [r["val_loss"] for r in one_val], rtol=1e-5)
    assert len(one) == 4 and one[-1]["loss"] < one[0]["loss"]


def test_sigterm_saves_a_checkpoint_that_resumes(data, tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "train.py", "config/tiny.py", *MINI, f"--data_dir={data}", f"--out_dir={out}",
            "--max_steps=100000", "--eval_interval=100000", "--micro_batch=4", "--batch_tokens=256"]
    proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while time.time() < deadline and not (out.joinpath("metrics.jsonl").exists() and len(metrics(out)[0]) >= 3):
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 0, stderr
    assert "stopped by signal 15" in stdout
    step = torch.load(out / "ckpt_last.pt", weights_only=True)["step"]
    assert step >= 3 and step == metrics(out)[0][-1]["step"]
    run([f"--data_dir={data}", f"--out_dir={out}", "--micro_batch=4", "--batch_tokens=256", "--resume=true",
         f"--max_steps={step + 2}", "--eval_interval=100000"])
    assert torch.load(out / "ckpt_last.pt", weights_only=True)["step"] == step + 2
    assert [r["step"] for r in metrics(out)[0]] == list(range(1, step + 3))


def test_compiled_training_on_cpu_matches_eager(data, tmp_path):
    common = [f"--data_dir={data}", "--max_steps=2", "--eval_interval=2", "--micro_batch=4", "--batch_tokens=256"]
    run(common + [f"--out_dir={tmp_path / 'eager'}"])
    p = run(common + [f"--out_dir={tmp_path / 'compiled'}", "--compile=true"])
    assert "compile True" in p.stdout
    eager, compiled = metrics(tmp_path / "eager")[0], metrics(tmp_path / "compiled")[0]
    np.testing.assert_allclose([r["loss"] for r in compiled], [r["loss"] for r in eager], rtol=1e-4)


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(data, tmp_path):
    out = tmp_path / "run"
    common = [f"--data_dir={data}", f"--out_dir={out}", "--micro_batch=4", "--batch_tokens=256",
              "--eval_interval=100000"]
    run(common + ["--max_steps=2"])
    good = torch.load(out / "ckpt_last.pt", weights_only=True)["model"]
    p = run(common + ["--resume=true", "--max_steps=50", "--lr=1e20", "--warmup_steps=0", "--grad_clip=0"],
            check=False)
    assert p.returncode == 3 and ("error: loss is nan" in p.stderr or "error: loss is inf" in p.stderr)
    after = torch.load(out / "ckpt_last.pt", weights_only=True)
    assert after["step"] == 2 and all(torch.equal(good[k], after["model"][k]) for k in good)


@pytest.mark.parametrize("args, message", [
    (["--data_dir={empty}"], "no data in {empty} (0 val and 0 train shards): run `python prepare_data.py"),
    (["--data_dir={corrupt}"], "t_train_000001.bin: bad magic 1234 (expected 20240520)"),
    (["--data_dir={data}", "--learning_rate=1e-3"], "unknown setting 'learning_rate' in --learning_rate=1e-3"),
    (["--data_dir={data}", "--micro_batch=3"], "batch_tokens=4096 must be a whole number of sequences of 64 tokens "
                                               "divisible by micro_batch * world_size = 3 * 1"),
    (["--data_dir={data}", "--max_step=10"], "did you mean 'max_steps'?"),
    (["--data_dir={data}", "--schedule=crwn"], "unknown schedule 'crwn'"),
])
def test_bad_input_fails_at_start_with_one_line(args, message, data, tmp_path):
    (tmp_path / "empty").mkdir()
    corrupt = make_shards(str(tmp_path / "corrupt"), np.arange(3000, dtype=np.uint16), 1000, [1000, 1000])
    with open(os.path.join(corrupt, "t_train_000001.bin"), "r+b") as f:
        f.write(np.int32(1234).tobytes())
    fill = dict(empty=tmp_path / "empty", corrupt=corrupt, data=data)
    p = run([a.format(**fill) for a in args] + [f"--out_dir={tmp_path / 'out'}"], check=False)
    assert p.returncode == 2
    assert p.stderr.startswith("error: ") and p.stderr.count("\n") == 1, p.stderr
    assert message.format(**fill) in p.stderr
    assert not (tmp_path / "out").exists()  # nothing started


def test_settings_parser():
    cfg = train.load_config(["config/tiny.py", "--compile=true", "--lr=1", "--wandb=false",
                             "--ffn_scale=(0.5, 3.0, 0.5)", "--ffn_widths=[64, 64, 64, 64, 64, 64, 64, 64]",
                             "--out_dir=123", "--dtype=float32"])
    assert cfg["compile"] is True                 # a None default can be overridden
    assert cfg["lr"] == 1.0 and isinstance(cfg["lr"], float)
    assert cfg["wandb"] is False and cfg["out_dir"] == "123"
    assert cfg["ffn_scale"] == (0.5, 3.0, 0.5) and cfg["ffn_widths"] == [64] * 8
    assert cfg["schedule"] == "crown" and cfg["d_model"] == 128  # from the config file
    for bad, message in [("--micro_batch=2.5", "micro_batch=2.5 in --micro_batch=2.5: expected a int"),
                         ("--lr_schedule=linear", "choose constant, cosine or wsd"),
                         ("--compile", "write settings as --key=value"),
                         ("config/nope.py", "config file config/nope.py not found")]:
        with pytest.raises(train.ConfigError, match=message.replace("(", r"\(")):
            train.load_config([bad])


def test_learning_rate_schedules():
    cfg = train.load_config(["--lr=1.0", "--max_steps=100", "--warmup_steps=10", "--lr_schedule=cosine",
                             "--min_lr_frac=0.1"])
    lrs = [train.lr_at(cfg, s) for s in range(100)]
    assert lrs[0] == 0.1 and lrs[9] == 1.0      # warmup never gives lr 0
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and 0.1 <= lrs[-1] < 0.11
    cfg.update(lr_schedule="wsd", decay_frac=0.2)
    lrs = [train.lr_at(cfg, s) for s in range(100)]
    assert lrs[10:80] == [1.0] * 70 and lrs[-1] == pytest.approx(0.1) and lrs[80] < 1.0
    cfg.update(lr_schedule="constant", warmup_steps=0)
    assert {train.lr_at(cfg, s) for s in range(100)} == {1.0}


def test_loader_ranks_are_disjoint_and_each_epoch_is_a_permutation(small_data):
    _, paths = train.find_shards(small_data)
    loader = train.Loader(paths, 64, seed=7)
    total = int(loader.windows.sum())
    assert total == 40
    def windows(start):
        return [(loader._locate(i), loader._shard[1]) for i in range(start, start + total)]
    first, second = windows(0), windows(total)
    every = {(o, s) for s in (0, 1) for o in range(0, 20 * 64, 64)}
    assert set(first) == set(second) == every  # each epoch visits every window once
    assert first != second                      # in a new order
    # step s, rank r, micro-step m reads windows seen + (m * world + r) * micro_batch + [0, micro_batch)
    world, micro, accum = 2, 2, 2
    taken = [(m * world + r) * micro + j for r in range(world) for m in range(accum) for j in range(micro)]
    assert sorted(taken) == list(range(world * micro * accum))
    x, y = loader.batch(3, 2)
    assert x.shape == (2, 64) and torch.equal(x[:, 1:], y[:, :-1])  # targets are inputs shifted by one
