"""bench.py: every field of the table and the JSON is there and sane, on tiny models in seconds.
Nothing here asserts a speed: speed targets live in bench.py's output, never in timed tests."""
import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import bench
from conftest import ROOT
from lws import LWSConfig, flops_per_token
from prepare_data import write_shard
from train import load_config

SHAPE = "n_layer = 2\nd_model = 64\nhead_dim = 16\nq_per_kv = 2\nblock_size = 64\nvocab_size = 512\nffn_multiple = 32\nlr = 3e-3\n"
FAST = ["--micro_batch=2", "--seq_len=32", "--steps=2", "--warmup=1", "--compile=false", "--dtype=float32",
        "--device=cpu", "--peak_n=256"]


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    """A tiny isotropic model named baseline18 (the ratio column's reference) and a tiny crown."""
    d = tmp_path_factory.mktemp("configs")
    (d / "baseline18.py").write_text(SHAPE + 'schedule = "isotropic"\nffn_scale = (2.0, 2.0)\nattn_scale = (0.5, 0.5)\n')
    (d / "crown.py").write_text(SHAPE + 'schedule = "crown"\nffn_scale = (0.5, 3.0, 0.5)\nattn_scale = (0.5, 1.0, 0.5)\n')
    return [str(d / "baseline18.py"), str(d / "crown.py")]


def test_train_json_and_table(configs):
    r = subprocess.run([sys.executable, "bench.py", *configs, *FAST, "--only=train", "--json"], cwd=ROOT,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)  # stdout is pure JSON; the table went to stderr
    peak = out["peak"]
    assert peak["flops"] == peak["matmul"]["float32"] > 0 and peak["matmul"]["bfloat16"] > 0
    assert "float32 matmul measured on this CPU" in peak["source"]
    rows = {x["config"]: x for x in out["train"]}
    assert list(rows) == ["baseline18", "crown"]
    assert rows["baseline18"]["ratio_vs_baseline"] == 1.0
    for path, x in zip(configs, out["train"]):
        assert x["flops_per_token"] == flops_per_token(LWSConfig.from_dict(load_config([path])), 32)["total"]
        assert len(x["step_s"]) == 2 and x["tokens_per_s"] > 0 and x["ms_per_step"] > 0
        assert x["tokens_per_s"] == pytest.approx(2 * 32 / (x["ms_per_step"] / 1000))
        assert x["flops_per_s"] == pytest.approx(x["tokens_per_s"] * x["flops_per_token"])
        assert 0 < x["mfu"] <= 1 and x["mfu"] == pytest.approx(x["flops_per_s"] / peak["flops"])
        assert x["ratio_vs_baseline"] == pytest.approx(x["tokens_per_s"] / rows["baseline18"]["tokens_per_s"])
        assert x["peak_mem_bytes"] > 2**20 and math.isfinite(x["loss"])
    assert out["meta"]["dtype"] == "float32" and out["meta"]["threads"] >= 1 and len(out["meta"]["loadavg_start"]) == 3
    for text in ("vs baseline18", "baseline18 isotropic", "crown", "MFU against", "matmul GFLOP/s here", "ru_maxrss"):
        assert text in r.stderr


def test_data_and_sample(capsys):
    threads = torch.get_num_threads()
    r = bench.main([*FAST, "--only=data,sample", "--sample_tokens=16", "--tokenize_docs=10"])
    assert set(r) == {"meta", "data", "sample"}
    d, s = r["data"], r["sample"]
    assert d["loader_tokens_per_s"] > 0 and d["seq_len"] == 32 and d["micro_batch"] == 2
    assert d["tokenize_tokens_per_s"] > 0 and d["tiktoken_tokens_per_s"] > 0, d["tokenize_report"]
    assert s["threads"] == 1 and s["new_tokens"] == 16 and torch.get_num_threads() == threads  # restored
    assert s["cached_tokens_per_s"] > 0 and s["uncached_tokens_per_s"] > 0
    assert s["cache_speedup"] == pytest.approx(s["cached_tokens_per_s"] / s["uncached_tokens_per_s"])
    table = capsys.readouterr().out
    assert "shard loader" in table and "KV cache" in table and "1 thread(s)" in table


def test_gpu_check_path_runs_on_cpu(configs, tmp_path):
    """--gpu_check's own code path (bench rows, then train.py's loss check, files written) on tiny sizes."""
    pattern = np.tile(np.arange(100, dtype=np.uint16), 2000)  # text a model learns in a few steps
    write_shard(str(tmp_path / "t_val_000000.bin"), pattern[:20_000])
    write_shard(str(tmp_path / "t_train_000001.bin"), pattern)
    out = tmp_path / "gpu.json"
    r = bench.main(["--gpu_check", *configs, *FAST, f"--check_config={configs[1]}", "--check_steps=20",
                    f"--data_dir={tmp_path}", f"--out={out}"])
    saved = json.loads(out.read_text())
    assert saved["loss_check"] == r["loss_check"] and [x["config"] for x in saved["train"]] == ["baseline18", "crown"]
    c = r["loss_check"]
    assert c["completed"] and c["steps"] == 20 and c["loss_fell"], c
    assert c["last_loss"] < c["first_val_loss"] - 1.0 and c["train_py_tokens_per_s"] > 0
    log = (tmp_path / "gpu.log").read_text()
    assert "train.py" in log and "val loss" in log and "loss falls" in log
    assert bench.LOG is None or bench.LOG.closed


@pytest.mark.parametrize("args, message", [
    (["--seq_len=128"], "exceeds the block_size=64"),
    (["--only=train,speed"], "choose from train, data, sample"),
    (["--dtype=float16"], "invalid choice"),
])
def test_bad_input_fails_before_any_work(configs, args, message, capsys):
    with pytest.raises(SystemExit) as e:
        bench.main([*configs, "--device=cpu", *args])
    assert e.value.code == 2 and message in capsys.readouterr().err


def test_missing_config_and_no_gpu(capsys):
    with pytest.raises(SystemExit):
        bench.main(["config/nope.py", "--device=cpu"])
    assert "nope.py" in capsys.readouterr().err
    if not torch.cuda.is_available():
        with pytest.raises(SystemExit):
            bench.main(["--gpu_check"])
        assert "needs a CUDA GPU" in capsys.readouterr().err
