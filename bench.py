"""
bench.py: the measured speed of every schedule, side by side. Speed targets live here, in a
benchmark, never in timed tests.

    python bench.py                                    # the seven paper configs, this machine's defaults
    python bench.py config/crown.py config/baseline18.py --micro_batch=2 --steps=3 --json
    python bench.py --only=data,sample                 # the quick parts: shard loader, tokenizer, sampling
    python bench.py --gpu_check                        # one H100/H200, < 8 min: bench_gpu.json + bench_gpu.log

Defaults. CUDA: micro-batch 48 x 1024, torch.compile, bf16 autocast, 3 warm-up + 10 timed steps.
CPU: 1 x 1024, eager, fp32 (as train.py), 1 warm-up + 2 timed steps: ~10 minutes for all seven.
MFU = model FLOPs per token (lws.flops_per_token) x tokens/s / peak. On CUDA the peak is the bf16
datasheet figure train.py uses. A CPU has no datasheet, so we measure this machine's large-matmul
FLOP/s in the same run, in the dtype we train in (fp32 and bf16 are both shown).
"""
import argparse, contextlib, gc, io, json, os, re, resource, shutil, subprocess, sys, tempfile, time

import numpy as np
import torch
import torch.nn.functional as F

import prepare_data
import sample
from lws import GPT, LWSConfig, flops_per_token
from train import Loader, device_peak_flops, load_config

ROOT = os.path.dirname(os.path.abspath(__file__))
PAPER = ["baseline12", "vanilla12", "baseline18", "vanilla18", "framed", "reverse", "crown"]
GPU_CHECK = ["baseline18", "crown", "reverse", "framed", "vanilla18"]  # the 18-layer set, most wanted first
BASELINE = "baseline18"  # the equal-cost isotropic model: each schedule's speed is given relative to it
LOG = None  # --gpu_check: what we say also goes to bench_gpu.log


def say(*a):  # progress goes to stderr, so that --json leaves stdout pure JSON
    for f in (sys.stderr, LOG) if LOG else (sys.stderr,):
        print(*a, file=f, flush=True)


def sync(device):  # CUDA runs asynchronously: stop a clock only once the GPU is done
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def matmul_flops(device, dtype, n, seconds=1.0):
    """Best FLOP/s of F.linear on n x n matrices (x @ w.T, the layout of nn.Linear) over `seconds` of
    timings after a warm-up call: the best, since on a shared machine others only ever slow us down.
    Layout matters: on a CPU without bf16 units a bf16 x @ w with w untransposed is another 10x slower."""
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    reps, best, end = (50 if device.startswith("cuda") else 1), [], time.perf_counter() + seconds
    F.linear(a, b)
    while time.perf_counter() < end or len(best) < 2:
        sync(device)
        t = time.perf_counter()
        for _ in range(reps):
            F.linear(a, b)
        sync(device)
        best.append(2 * n ** 3 * reps / (time.perf_counter() - t))
    return max(best)


def reference_peak(a):
    """(FLOP/s, its source, the matmul FLOP/s measured here). CUDA: the bf16 datasheet peak train.py
    uses. A CPU: no datasheet, so this machine's large matmul, now, in the dtype we train in. bf16 is
    measured too: CPUs without bf16 units emulate it, which is why train.py defaults to fp32 there."""
    secs = min(1.0, (a.peak_n or 2048) / 2048)  # a small --peak_n (tests) needs less time to time
    if a.device.startswith("cuda"):
        mm = {"bfloat16": matmul_flops(a.device, torch.bfloat16, a.peak_n or 8192, secs)}
        peak, source = device_peak_flops(a.device)
        return (peak, source, mm) if peak else (mm["bfloat16"], "bfloat16 matmul measured on this GPU now", mm)
    n = a.peak_n or 2048  # bf16 at half the size: emulated, it is slow
    mm = {"float32": matmul_flops("cpu", torch.float32, n, secs),
          "bfloat16": matmul_flops("cpu", torch.bfloat16, n // 2, secs)}
    return mm[a.dtype], f"{a.dtype} matmul measured on this CPU now", mm


def peak_memory(device, reset=False):
    """Peak bytes since the last reset: allocated tensors on CUDA, the process's RSS on a CPU."""
    if device.startswith("cuda"):
        return torch.cuda.reset_peak_memory_stats() if reset else torch.cuda.max_memory_allocated()
    if reset:  # Linux: "5" resets the peak RSS that ru_maxrss reports, so each config gets its own
        with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def bench_train(path, a, autocast, peak):
    """One config: `warmup` steps (they absorb torch.compile and AdamW's lazy state), then `steps`
    timed steps of what train.py does in a step: forward, backward, clip, AdamW, zero_grad."""
    cfg = LWSConfig.from_dict(load_config([path]))
    T = a.seq_len or cfg.block_size
    torch.manual_seed(0)
    with torch.device(a.device):
        model = GPT(cfg)
    # AdamW as train.py builds it: no weight decay on vectors and the input embedding
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("wte.")]
    rest = [p for n, p in model.named_parameters() if p.dim() < 2 or n.startswith("wte.")]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01}, {"params": rest, "weight_decay": 0.0}],
                            lr=6e-4, betas=(0.9, 0.95), eps=1e-8, fused=a.fused_adam)
    run = torch.compile(model) if a.compile else model
    # Random tokens: a step's speed does not depend on the text (the loader is timed on its own).
    xy = torch.randint(0, min(cfg.vocab_size, sample.GPT2_VOCAB), (a.micro_batch, T + 1), device=a.device)

    def step():
        with autocast:
            _, loss = run(xy[:, :-1], xy[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return loss.item()  # one sync per step, as train.py's .item() of the loss

    for _ in range(a.warmup):
        step()
    peak_memory(a.device, reset=True)  # the steady state: weights, grads, AdamW moments, activations
    times = []
    for _ in range(a.steps):
        t = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t)
    dt = sum(times) / len(times)
    tok_s, fpt = a.micro_batch * T / dt, flops_per_token(cfg, T)["total"]
    row = dict(config=os.path.basename(path).removesuffix(".py"), schedule=cfg.schedule, n_layer=cfg.n_layer,
               params=model.num_params(), tokens_per_s=tok_s, ms_per_step=1000 * dt, step_s=times, loss=loss,
               flops_per_token=fpt, flops_per_s=fpt * tok_s, mfu=fpt * tok_s / peak,
               peak_mem_bytes=peak_memory(a.device))
    del model, run, opt
    gc.collect()
    if a.compile:
        torch._dynamo.reset()  # a new model per config: without this dynamo's recompile limit would bite
    if a.device.startswith("cuda"):
        torch.cuda.empty_cache()
    return row


def bench_data(a, T, seconds=1.0):
    """tokens/s of train.Loader over four 1M-token shards in a temp dir, then prepare_data.py's own
    tokenizer benchmark on a few hundred pydocs documents (all of them: python prepare_data.py --bench)."""
    with tempfile.TemporaryDirectory() as tmp:
        paths = [os.path.join(tmp, f"bench_train_{i:06d}.bin") for i in range(1, 5)]
        for i, p in enumerate(paths):
            prepare_data.write_shard(p, np.random.default_rng(i).integers(0, 50257, 1 << 20, np.uint16))
        loader, n, t = Loader(paths, T, seed=1337), 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            loader.batch(n, a.micro_batch)
            n += a.micro_batch
        res = dict(loader_tokens_per_s=n * T / (time.perf_counter() - t), micro_batch=a.micro_batch,
                   seq_len=T)
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        prepare_data.bench(prepare_data.parse_args(["--bench", f"--bench_docs={a.tokenize_docs}"]))
    for key, name in (("tokenize_tokens_per_s", "ours"), ("tiktoken_tokens_per_s", "bare tiktoken")):
        m = re.search(rf"^{name}.*: ([\d.]+)M tokens/s", out.getvalue(), re.M)
        res[key] = float(m.group(1)) * 1e6 if m else None
    return dict(res, tokenize_docs=a.tokenize_docs, tokenize_report=out.getvalue().strip())


def bench_sample(a, autocast):
    """Decoding speed of config/tiny.py's model, batch 1, with and without the KV cache. On a CPU one
    thread: decoding is hundreds of tiny ops, and two threads spend their time waiting on each other."""
    torch.manual_seed(0)
    with torch.device(a.device):  # random weights: the speed does not depend on them
        model = GPT(LWSConfig.from_dict(load_config([os.path.join(ROOT, "config", "tiny.py")]))).eval()
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if a.device == "cpu" else threads)
    res = dict(config="tiny", new_tokens=a.sample_tokens, threads=torch.get_num_threads())
    try:
        prompt = torch.full((1, 1), sample.EOT, device=a.device)
        for cache in (True, False):
            kw = dict(temperature=0.8, top_k=200, use_cache=cache, verbose=False)  # sample.py's defaults
            with autocast:
                sample.generate(model, prompt, 8, **kw)  # warm-up
                sync(a.device)
                t = time.perf_counter()
                gen = torch.Generator(a.device).manual_seed(0)
                out = sample.generate(model, prompt, a.sample_tokens, generator=gen, **kw)
                sync(a.device)
            res[f"{'' if cache else 'un'}cached_tokens_per_s"] = (out.size(1) - 1) / (time.perf_counter() - t)
    finally:
        torch.set_num_threads(threads)
    return dict(res, cache_speedup=res["cached_tokens_per_s"] / res["uncached_tokens_per_s"])


def loss_check(a, deadline):
    """--gpu_check: a few hundred steps of train.py itself, on real text. Does the loss fall? Its log
    also gives a second opinion on tokens/s: the trainer's own figure, not this bench's."""
    data, log = a.data_dir or os.path.join(ROOT, "data", "pydocs"), dict(stdout=LOG, stderr=subprocess.STDOUT)
    if not a.data_dir and not os.path.exists(os.path.join(data, "manifest.json")):  # offline: ~3.4M tokens
        subprocess.run([sys.executable, os.path.join(ROOT, "prepare_data.py"), "--dataset=pydocs",
                        f"--out_dir={data}"], check=True, **log)
    T, tmp = LWSConfig.from_dict(load_config([a.check_config])).block_size, tempfile.mkdtemp(prefix="bench_")
    cmd = [sys.executable, os.path.join(ROOT, "train.py"), a.check_config, f"--data_dir={data}",
           f"--out_dir={tmp}", f"--device={a.device}", f"--dtype={a.dtype}", f"--compile={a.compile}",
           f"--micro_batch={a.micro_batch}", f"--batch_tokens={a.micro_batch * T}", f"--max_steps={a.check_steps}",
           f"--eval_interval={a.check_steps}", f"--eval_tokens={4 * a.micro_batch * T}", "--log_interval=10"]
    # (evaluated at the first and the last step only: each evaluation also writes a GB-sized checkpoint)
    say(" ".join(cmd))
    res = dict(cmd=" ".join(cmd), completed=True)
    try:  # past the deadline it is stopped; what it logged until then still counts
        subprocess.run(cmd, check=True, timeout=max(30, deadline - time.time()), **log)
    except (subprocess.TimeoutExpired, subprocess.CalledProcessError) as e:
        res.update(completed=False, error=str(e))
    path = os.path.join(tmp, "metrics.jsonl")
    rows = [json.loads(line) for line in open(path)] if os.path.exists(path) else []
    shutil.rmtree(tmp, ignore_errors=True)  # a 180M model's checkpoints: GBs nobody needs
    vals, trains = [r for r in rows if "val_loss" in r], [r for r in rows if "loss" in r]
    if vals and trains:
        last = vals[-1] if vals[-1]["step"] >= trains[-1]["step"] else trains[-1]
        res.update(steps=last["step"], first_val_loss=vals[0]["val_loss"], last_loss=last.get("val_loss", last.get(
            "loss")), train_py_tokens_per_s=trains[-1]["tok_s"], train_py_mfu=trains[-1]["mfu"])
    res["loss_fell"] = bool(vals and trains) and res["last_loss"] < res["first_val_loss"] - 1.0  # by a nat or more
    return res


def table(r):
    m, out, rate = r["meta"], [], lambda v: f"{v / 1e6:,.2f}M tokens/s" if v else "n/a"
    if "train" in r:
        out.append(f"{'config':<11}{'schedule':<10}{'L':>3}{'params':>8}{'tok/s':>9}{'ms/step':>9}"
                   f"{'GFLOP/tok':>10}{'GFLOP/s':>9}{'MFU':>7}{'peak mem':>10}{'vs ' + BASELINE:>14}")
        for x in r["train"]:
            ratio = f"{x['ratio_vs_baseline']:.3f}" if x["ratio_vs_baseline"] else "n/a"
            out.append(f"{x['config']:<11}{x['schedule']:<10}{x['n_layer']:>3}{x['params'] / 1e6:>7.1f}M"
                       f"{x['tokens_per_s']:>9,.0f}{x['ms_per_step']:>9,.0f}{x['flops_per_token'] / 1e9:>10.3f}"
                       f"{x['flops_per_s'] / 1e9:>9,.1f}{100 * x['mfu']:>6.1f}%"
                       f"{x['peak_mem_bytes'] / 2**30:>7.2f}GiB{ratio:>14}")
        p, mm = r["peak"], ", ".join(f"{k} {v / 1e9:,.1f}" for k, v in r["peak"]["matmul"].items())
        out += [f"{m['device_name']} | {m['dtype']} | compile {m['compile']} | {m['threads']} threads | "
                f"micro-batch {m['micro_batch']} x {m['seq_len'] or 'block_size'} | {m['warmup']} warm-up + "
                f"{m['steps']} timed steps | AdamW fused={m['fused_adam']} | load average "
                f"{m['loadavg_start'][0]:.2f} at the start, {m['loadavg_end'][0]:.2f} at the end",
                f"MFU against {p['flops'] / 1e9:,.1f} GFLOP/s: {p['source']} (matmul GFLOP/s here: {mm})",
                "peak mem: " + ("torch.cuda.max_memory_allocated" if m["device"].startswith("cuda") else
                                "peak RSS of the whole process (ru_maxrss)")]
    if "data" in r:
        d = r["data"]
        out.append(f"data: shard loader {rate(d['loader_tokens_per_s'])} at {d['micro_batch']} x {d['seq_len']}" +
                   (f", {d['headroom']:,.0f}x what the fastest config trains on" if "headroom" in d else "") +
                   f" | tokenizer (prepare_data.py --bench, {d['tokenize_docs']} docs) "
                   f"{rate(d['tokenize_tokens_per_s'])}, bare tiktoken {rate(d['tiktoken_tokens_per_s'])}")
    if "sample" in r:
        s = r["sample"]
        out.append(f"sample: {s['config']} model, batch 1, {s['new_tokens']} new tokens, {s['threads']} "
                   f"thread(s): KV cache {s['cached_tokens_per_s']:,.0f} tokens/s, without "
                   f"{s['uncached_tokens_per_s']:,.0f} ({s['cache_speedup']:.1f}x)")
    if "loss_check" in r:
        c = r["loss_check"]
        out.append(f"loss check, train.py {os.path.basename(m['check_config'])}: " + (
            f"{c['first_val_loss']:.3f} -> {c['last_loss']:.3f} in {c['steps']} steps, "
            f"{c['train_py_tokens_per_s']:,.0f} tok/s: " if "steps" in c else "no metrics: ") +
            ("loss falls" if c["loss_fell"] else "LOSS DID NOT FALL"))
    return "\n".join(out)


def parse_args(argv):
    """The settings, each device's defaults filled in, every config checked before any work starts."""
    def flag(s):
        if s.lower() not in ("1", "true", "yes", "0", "false", "no"):
            raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")
        return s.lower() in ("1", "true", "yes")
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("configs", nargs="*", help="config files (default: the seven paper configs)")
    p.add_argument("--micro_batch", type=int, help="sequences per step (CUDA 48, CPU 1)")
    p.add_argument("--seq_len", type=int, default=0, help="tokens per sequence (default: the block_size)")
    p.add_argument("--steps", type=int, help="timed steps (CUDA 10, CPU 2)")
    p.add_argument("--warmup", type=int, help="untimed steps first (CUDA 3, CPU 1)")
    p.add_argument("--compile", type=flag, help="torch.compile (default: on CUDA only, as train.py)")
    p.add_argument("--dtype", default="auto", choices=["auto", "bfloat16", "float32"], help="auto: as train.py")
    p.add_argument("--device", default="auto", help="auto | cuda | cuda:1 | cpu")
    p.add_argument("--fused_adam", type=flag, help="fused AdamW (default: on CUDA only, as train.py)")
    p.add_argument("--only", default="train,data,sample", help="any of train,data,sample")
    p.add_argument("--json", action="store_true", help="print JSON (the table goes to stderr)")
    p.add_argument("--out", help="also write the JSON to this file")
    p.add_argument("--peak_n", type=int, default=0, help="size of the peak matmul (CUDA 8192, CPU 2048)")
    p.add_argument("--sample_tokens", type=int, default=256)
    p.add_argument("--tokenize_docs", type=int, default=300)
    p.add_argument("--gpu_check", action="store_true", help="the 18-layer configs at 48 x 1024, then train.py "
                   "on --check_config for --check_steps, all within --budget_s seconds")
    p.add_argument("--data_dir", help="shards for the loss check (default: data/pydocs, built if missing)")
    p.add_argument("--check_config", default=os.path.join(ROOT, "config", "crown.py"))
    p.add_argument("--check_steps", type=int, default=300)
    p.add_argument("--budget_s", type=float, default=450)
    a = p.parse_args(argv)
    a.sections = set(a.only.split(","))
    if a.sections - {"train", "data", "sample"}:
        p.error(f"--only={a.only}: choose from train, data, sample")
    if a.gpu_check and a.device == "auto" and not torch.cuda.is_available():
        p.error("--gpu_check needs a CUDA GPU (with --device=cpu it runs the same path, for the tests)")
    a.device = a.device if a.device != "auto" else "cuda" if torch.cuda.is_available() else "cpu"
    cuda = a.device.startswith("cuda")
    big = cuda or a.gpu_check
    if a.gpu_check:
        a.configs = a.configs or [os.path.join(ROOT, "config", c + ".py") for c in GPU_CHECK]
        a.sections, a.out = {"train"}, a.out or "bench_gpu.json"
    a.configs = a.configs or [os.path.join(ROOT, "config", c + ".py") for c in PAPER]
    a.micro_batch, a.steps = a.micro_batch or (48 if big else 1), a.steps or (10 if big else 2)
    a.warmup = a.warmup if a.warmup is not None else 3 if big else 1
    a.compile = a.compile if a.compile is not None else cuda
    a.fused_adam = a.fused_adam if a.fused_adam is not None else cuda
    if a.dtype == "auto":  # CPUs without bf16 units emulate it, >5x slower than fp32 (see the matmul line)
        a.dtype = "bfloat16" if cuda and torch.cuda.is_bf16_supported() else "float32"
    for c in a.configs + ([a.check_config] if a.gpu_check else []):
        try:
            block = LWSConfig.from_dict(load_config([c])).block_size
        except ValueError as e:  # train.ConfigError (a missing file, an unknown key), or a shape lws refuses
            p.error(str(e))
        if a.seq_len > block:
            p.error(f"--seq_len={a.seq_len} exceeds the block_size={block} of {c}")
    return a


def main(argv=None):
    global LOG
    a, t0 = parse_args(argv), time.time()
    cuda = a.device.startswith("cuda")
    autocast = contextlib.nullcontext() if a.dtype == "float32" else torch.autocast(a.device.split(":")[0],
                                                                                    torch.bfloat16)
    for d in (os.path.join(ROOT, "..", "shared", "tiktoken"), os.path.join(ROOT, "shared", "tiktoken")):
        if os.path.isdir(d):  # offline GPT-2 BPE, as tests/conftest.py: test machines have no internet
            os.environ.setdefault("TIKTOKEN_CACHE_DIR", d)
    LOG = open(os.path.splitext(a.out)[0] + ".log", "w") if a.gpu_check else None
    name = torch.cuda.get_device_name(a.device) if cuda else f"CPU ({os.cpu_count()} cores)"
    r = {"meta": dict(device=a.device, device_name=name, torch=torch.__version__, dtype=a.dtype, compile=a.compile,
                      threads=torch.get_num_threads(), micro_batch=a.micro_batch, seq_len=a.seq_len,
                      steps=a.steps, warmup=a.warmup, fused_adam=a.fused_adam, check_config=a.check_config,
                      loadavg_start=os.getloadavg())}

    def save():
        r["meta"].update(loadavg_end=os.getloadavg(), wall_s=time.time() - t0)
        if a.out:
            with open(a.out, "w") as f:
                json.dump(r, f, indent=1)

    if "data" in a.sections:  # first: it forks tokenizer processes, best done before CUDA starts
        say("data: shard loader and tokenizer ...")
        r["data"] = bench_data(a, a.seq_len or 1024)
    if "sample" in a.sections:
        say("sample: with and without the KV cache ...")
        r["sample"] = bench_sample(a, autocast)
    if "train" in a.sections:
        peak, source, mm = reference_peak(a)
        r["peak"], r["train"], longest = dict(flops=peak, source=source, matmul=mm), [], 0.0
        for c in a.configs:
            if a.gpu_check and time.time() - t0 + longest > 0.65 * a.budget_s:  # keep time for the loss check
                say(f"skipping {c}: the time budget is spent")
                continue
            say(f"train: {c} ...")
            t = time.time()
            r["train"].append(bench_train(c, a, autocast, peak))
            longest = max(longest, time.time() - t)
            save()  # row by row: a run cut short still leaves its figures
        base = next((x["tokens_per_s"] for x in r["train"] if x["config"] == BASELINE), None)
        for x in r["train"]:
            x["ratio_vs_baseline"] = x["tokens_per_s"] / base if base else None
        if "data" in r and r["train"]:
            r["data"]["headroom"] = r["data"]["loader_tokens_per_s"] / max(x["tokens_per_s"] for x in r["train"])
    if a.gpu_check:
        r["loss_check"] = loss_check(a, t0 + a.budget_s - 10)
    save()
    print(table(r), file=sys.stderr if a.json else sys.stdout)
    if a.json:
        print(json.dumps(r, indent=1))
    if LOG:
        print(table(r), file=LOG)
        LOG.close()
    return r


if __name__ == "__main__":
    main()
