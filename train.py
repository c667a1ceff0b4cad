"""
train.py: the whole training loop, one GPU or many, one node or several.

    python train.py config/tiny.py                          # laptop CPU, minutes
    torchrun --nproc_per_node=8 train.py config/crown.py    # the paper's 5.11B-token run
    python train.py config/crown.py --micro_batch=24 --lr=3e-4 --resume=true

Settings: the defaults below (the paper's recipe), then any config files in order, then
--key=value overrides. Every field of lws.LWSConfig is a setting too (n_layer, ffn_scale, ...).
"""
import ast
import difflib
import json
import math
import os
import signal
import sys
import time
from contextlib import nullcontext
from dataclasses import fields

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from lws import GPT, LWSConfig, clean_state_dict, describe, flops_per_token, read_config_file
from prepare_data import ShardError, find_shards, read_header, read_shard

DEFAULTS = dict(
    out_dir="out/run",
    data_dir="data/fineweb10B",
    resume=False,              # continue from out_dir/ckpt_last.pt
    # batch: in tokens, like the paper (384 sequences of 1024); accumulation is derived from it
    batch_tokens=393_216,
    micro_batch=48,            # sequences per GPU per forward pass
    max_steps=13_000,          # 13,000 x 393,216 = 5.11B tokens
    run_steps=0,               # stop (and save) after this many steps in this invocation; 0: run to max_steps
    # AdamW, as the paper's released code: a constant 6e-4 with no warmup
    lr=6e-4,
    lr_schedule="constant",    # constant | cosine | wsd (warmup-stable-decay)
    warmup_steps=0,
    decay_frac=0.2,            # wsd: the last 20% of steps decay linearly
    min_lr_frac=0.0,           # cosine and wsd end at lr * min_lr_frac
    weight_decay=0.01,
    beta1=0.9,
    beta2=0.95,
    adam_eps=1e-8,
    grad_clip=1.0,
    # evaluation on the first eval_tokens of the validation shard
    eval_interval=650,         # 20 evaluations per paper run, plus one at the start
    eval_tokens=10_000_000,
    log_interval=10,
    # system
    device="auto",             # auto | cuda | mps | cpu
    dtype="auto",              # auto (bf16 on GPUs that have it, else fp32) | bfloat16 | float32
    compile=None,              # None: on for CUDA, off elsewhere
    seed=1337,
    peak_flops=0.0,            # bf16 peak FLOP/s of one device for MFU; 0: look it up in PEAK_FLOPS
    wandb=False,
    wandb_project="lws",
    wandb_run_name="",
)
MODEL_DEFAULTS = {f.name: f.default for f in fields(LWSConfig)}

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' datasheets, per device. MFU against
# the wrong peak is a classic bug (104% "MFU" on an H100 measured against an A100), so match the
# name, and say so when the device is unknown rather than guess.
PEAK_FLOPS = [("H200", 989e12), ("GH200", 989e12), ("H100 PCIe", 756e12), ("H100 NVL", 835e12),
              ("H100", 989e12), ("H800", 989e12), ("B200", 2250e12), ("B100", 1750e12),
              ("A100", 312e12), ("A800", 312e12), ("L40S", 362e12), ("L40", 181e12), ("L4", 121e12),
              ("A10G", 70e12), ("A10", 125e12), ("RTX 4090", 165e12), ("RTX 3090", 71e12),
              ("A6000", 155e12), ("MI300X", 1307e12), ("MI250X", 383e12)]


class ConfigError(ValueError):
    pass


def device_peak_flops(device, override=0.0):
    """(FLOP/s, description) of one device, or (None, why not) where no honest figure is known."""
    if override:
        return override, "peak_flops setting"
    if device.startswith("cuda"):
        name = torch.cuda.get_device_name(device)
        for key, flops in PEAK_FLOPS:
            if key in name:
                return flops, f"{name}, bf16 datasheet"
        return None, f"{name} is not in PEAK_FLOPS: set --peak_flops"
    return None, f"no datasheet peak for {device}: set --peak_flops (bench.py measures one)"


# ------------------------------------------------------------------------------------- settings
def parse_value(text, default):
    """A command-line value: true/false, a Python literal, or else the text itself."""
    if isinstance(default, str):
        return text
    if text.lower() in ("true", "false"):
        return text.lower() == "true"
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def set_key(cfg, key, value, where):
    if key not in cfg:
        close = difflib.get_close_matches(key, cfg, n=1)
        hint = f": did you mean {close[0]!r}?" if close else ": see the defaults in train.py and lws.LWSConfig"
        raise ConfigError(f"unknown setting {key!r} in {where}{hint}")
    default = {**DEFAULTS, **MODEL_DEFAULTS}[key]
    if default is None or value is None or type(value) is type(default):
        cfg[key] = value
    elif isinstance(default, float) and type(value) is int:
        cfg[key] = float(value)  # --lr=1 means 1.0
    elif isinstance(default, (tuple, list)) and isinstance(value, (tuple, list)):
        cfg[key] = tuple(value)
    else:
        raise ConfigError(f"{key}={value!r} in {where}: expected a {type(default).__name__} like {default!r}")


def load_config(argv):
    cfg = {**DEFAULTS, **MODEL_DEFAULTS}
    for arg in argv:
        if arg.startswith("--"):
            key, eq, text = arg[2:].partition("=")
            if not eq:
                raise ConfigError(f"{arg}: write settings as --key=value")
            set_key(cfg, key, parse_value(text, cfg.get(key)), arg)
        elif not os.path.isfile(arg):
            raise ConfigError(f"config file {arg} not found: see config/ for the ones we ship")
        else:
            for key, value in read_config_file(arg).items():
                set_key(cfg, key, value, arg)
    if cfg["lr_schedule"] not in ("constant", "cosine", "wsd"):
        raise ConfigError(f"lr_schedule={cfg['lr_schedule']!r}: choose constant, cosine or wsd")
    if cfg["dtype"] not in ("auto", "bfloat16", "float32"):
        raise ConfigError(f"dtype={cfg['dtype']!r}: choose auto, bfloat16 or float32 (fp16 without a "
                          "loss scaler diverges)")
    return cfg


def lr_at(cfg, step):
    """Learning rate for 0-based `step`. Warmup starts at lr/warmup_steps, never at 0."""
    lr, warm, n = cfg["lr"], cfg["warmup_steps"], cfg["max_steps"]
    low = lr * cfg["min_lr_frac"]
    if step < warm:
        return lr * (step + 1) / warm
    if cfg["lr_schedule"] == "cosine":
        progress = (step - warm) / max(1, n - warm)
        return low + 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))) * (lr - low)
    if cfg["lr_schedule"] == "wsd":
        decay_start = n - int(cfg["decay_frac"] * n)
        if step >= decay_start:
            return lr - (lr - low) * (step - decay_start + 1) / max(1, n - decay_start)
    return lr


# ----------------------------------------------------------------------------------------- data
class Loader:
    """Training windows of block_size + 1 tokens from the train shards, for every rank.

    The data of one epoch is a fixed permutation: shards in a seeded random order, and the
    windows of each shard in a seeded random order. The whole run is one stream of windows,
    epoch after epoch, and its only state is `seen`, the number of windows consumed by all ranks
    together. Step s takes the next batch_size windows; rank r, micro-step m takes its own slice.
    So ranks never overlap, any world size sees the same batches, and resuming is exact."""

    def __init__(self, paths, T, seed):
        self.paths, self.T, self.seed = paths, T, seed
        self.windows = np.array([(read_header(p) - 1) // T for p in paths])  # validates every shard
        if self.windows.sum() == 0:
            raise ShardError(f"train shards in {os.path.dirname(paths[0])} hold fewer than {T + 1} tokens")
        self.seen = 0
        self._epoch = self._shard = None

    def _locate(self, i):
        """Shard index and token offset of window i of the stream."""
        epoch, i = divmod(i, int(self.windows.sum()))
        if epoch != self._epoch:
            self._epoch = epoch
            self._order = np.random.default_rng((self.seed, epoch)).permutation(len(self.paths))
            self._ends = np.cumsum(self.windows[self._order])
        k = int(np.searchsorted(self._ends, i, side="right"))
        shard = int(self._order[k])
        if (epoch, shard) != self._shard:  # hold one shard's memmap at a time
            self._shard = (epoch, shard)
            self._tokens = read_shard(self.paths[shard])
            self._perm = np.random.default_rng((self.seed, epoch, shard)).permutation(self.windows[shard])
        return int(self._perm[i - (self._ends[k] - self.windows[shard])]) * self.T

    def batch(self, start, n):
        """Windows start .. start+n-1 of the stream as (inputs, targets), each (n, T) int64."""
        rows = []
        for i in range(start, start + n):
            offset = self._locate(i)
            rows.append(self._tokens[offset:offset + self.T + 1])
        buf = torch.from_numpy(np.stack(rows).astype(np.int64))
        return buf[:, :-1], buf[:, 1:]


@torch.no_grad()
def evaluate(model, val, T, micro_batch, rank, world, device, autocast):
    """Mean loss over all windows of `val`, split across ranks. Every batch has the same shape
    (short ones are padded with ignored targets), so a compiled model never recompiles."""
    n = (len(val) - 1) // T
    mine = list(range(rank, n, world))
    per_rank = -(-n // world)  # every rank runs the same number of batches
    total = torch.zeros(2, device=device, dtype=torch.float64)  # loss sum, token count
    for b in range(0, per_rank, micro_batch):
        x = torch.zeros(micro_batch, T, dtype=torch.long)
        y = torch.full((micro_batch, T), -1, dtype=torch.long)
        for j, w in enumerate(mine[b:b + micro_batch]):
            window = torch.from_numpy(val[w * T:w * T + T + 1].astype(np.int64))
            x[j], y[j] = window[:-1], window[1:]
        count = int((y != -1).sum())
        if count:
            with autocast:
                _, loss = model(x.to(device), y.to(device))
            total += torch.stack([loss.double() * count, torch.tensor(float(count), device=device)])
    if world > 1:
        dist.all_reduce(total)
    return (total[0] / total[1]).item()


# ---------------------------------------------------------------------------------- checkpoints
def save_checkpoint(path, model, optimizer, cfg, step, seen, val_loss, best_val_loss):
    ckpt = {
        "format": "lws-checkpoint", "version": 1,
        "model": clean_state_dict(model.state_dict()),
        "model_config": model.cfg.to_dict(),
        "config": {k: list(v) if isinstance(v, tuple) else v for k, v in cfg.items()},
        "optimizer": optimizer.state_dict(),
        "step": step, "tokens_seen": seen * model.cfg.block_size, "loader": {"seen": seen},
        "val_loss": val_loss, "best_val_loss": best_val_loss,
        "rng": {"torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []},
    }
    torch.save(ckpt, path + ".tmp")
    os.replace(path + ".tmp", path)  # atomic: a crash mid-write never destroys the last checkpoint


# ----------------------------------------------------------------------------------------- main
def main(argv):
    cfg = load_config(argv)
    rank, local_rank, world = (int(os.environ.get(k, d)) for k, d in
                               (("RANK", 0), ("LOCAL_RANK", 0), ("WORLD_SIZE", 1)))
    master = rank == 0
    say = print if master else (lambda *a, **k: None)

    # Shapes and data are checked before anything heavy starts, so mistakes fail in a second.
    try:
        model_cfg = LWSConfig.from_dict(cfg)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    T = model_cfg.block_size
    ckpt_path = os.path.join(cfg["out_dir"], "ckpt_last.pt")
    ckpt = None
    if cfg["resume"]:
        if not os.path.exists(ckpt_path):
            raise ConfigError(f"--resume: no checkpoint at {ckpt_path}; drop --resume to start a new run")
        ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
        for k, v in ckpt["model_config"].items():
            mine = list(cfg[k]) if isinstance(cfg[k], tuple) else cfg[k]
            if mine != v:
                raise ConfigError(f"--resume: the checkpoint's model has {k}={v!r} but the settings say "
                                  f"{mine!r}; a run cannot change its model")
    elif os.path.exists(ckpt_path):
        raise ConfigError(f"{cfg['out_dir']} already holds a run: pass --resume=true to continue it, "
                          "or choose another --out_dir")
    seqs = cfg["batch_tokens"] // T
    if cfg["batch_tokens"] % T or seqs % (cfg["micro_batch"] * world):
        raise ConfigError(f"batch_tokens={cfg['batch_tokens']} must be a whole number of sequences of "
                          f"{T} tokens divisible by micro_batch * world_size = {cfg['micro_batch']} * "
                          f"{world}: try batch_tokens={cfg['micro_batch'] * world * T * max(1, seqs // (cfg['micro_batch'] * world))}")
    accum = seqs // (cfg["micro_batch"] * world)
    val_paths, train_paths = find_shards(cfg["data_dir"])
    loader = Loader(train_paths, T, cfg["seed"])
    val = read_shard(val_paths[0])[:cfg["eval_tokens"] + 1]
    if len(val) < T + 1:
        raise ShardError(f"{val_paths[0]} holds {len(val)} tokens, fewer than one window of {T + 1}")

    # Devices. DDP runs one process per GPU: NCCL between GPUs, gloo between CPU processes.
    device = cfg["device"]
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    if device == "cuda":
        device = f"cuda:{local_rank}"
        torch.cuda.set_device(device)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    if world > 1:
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    dtype = cfg["dtype"]
    if dtype == "auto":  # bf16 autocast keeps fp32 master weights; CPUs without bf16 units run it slower
        dtype = "bfloat16" if device.startswith("cuda") and torch.cuda.is_bf16_supported() else "float32"
    dev_type = device.split(":")[0]
    autocast = (torch.autocast(dev_type, dtype=torch.bfloat16) if dtype == "bfloat16" else nullcontext())
    torch.manual_seed(cfg["seed"])

    with torch.device(device):  # initialise on the device: fast even for the 180M models
        model = GPT(model_cfg)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2 and not n.startswith("wte.")]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2 or n.startswith("wte.")]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": cfg["weight_decay"]},
                                   {"params": no_decay, "weight_decay": 0.0}],
                                  lr=cfg["lr"], betas=(cfg["beta1"], cfg["beta2"]), eps=cfg["adam_eps"],
                                  fused=dev_type == "cuda")
    step, best_val, val_loss = 0, None, None
    if ckpt:
        model.load_state_dict(clean_state_dict(ckpt["model"]))
        optimizer.load_state_dict(ckpt["optimizer"])
        step, loader.seen, best_val = ckpt["step"], ckpt["loader"]["seen"], ckpt["best_val_loss"]
        torch.set_rng_state(ckpt["rng"]["torch"])
        if dev_type == "cuda" and len(ckpt["rng"]["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(ckpt["rng"]["cuda"])
        del ckpt
    raw = model
    use_compile = cfg["compile"] if cfg["compile"] is not None else dev_type == "cuda"
    if use_compile:
        model = torch.compile(model)
    train_model = DDP(model, device_ids=[local_rank] if dev_type == "cuda" else None) if world > 1 else model

    flops_token = flops_per_token(model_cfg, T)["total"]
    peak, peak_source = device_peak_flops(device, cfg["peak_flops"])
    if master:
        os.makedirs(cfg["out_dir"], exist_ok=True)
        with open(os.path.join(cfg["out_dir"], "config.json"), "w") as f:
            json.dump(cfg, f, indent=1)
        say(f"lws train | torch {torch.__version__} | {device} x {world} | {dtype} | compile {use_compile}")
        say(json.dumps(cfg))
        say(describe(model_cfg))
        say(f"batch {seqs} x {T} = {seqs * T:,} tokens = {cfg['micro_batch']} per micro-step x {world} ranks"
            f" x {accum} accumulation steps | {len(train_paths)} train shards, {int(loader.windows.sum()):,}"
            f" windows | MFU against {peak_source}")
    metrics_path = os.path.join(cfg["out_dir"], "metrics.jsonl")
    if master and step > 0 and os.path.exists(metrics_path):  # drop rows the resumed run will redo
        with open(metrics_path) as f:
            rows = [r for r in f if json.loads(r)["step"] <= step]
        with open(metrics_path, "w") as f:
            f.writelines(rows)
    log = open(metrics_path, "a") if master else None
    if master and cfg["wandb"]:
        import wandb
        wandb.init(project=cfg["wandb_project"], name=cfg["wandb_run_name"] or None, config=cfg)

    def record(row):
        if master:
            log.write(json.dumps(row) + "\n")
            log.flush()
            if cfg["wandb"]:
                wandb.log(row, step=row["step"])

    def eval_and_save(final=False):
        nonlocal val_loss, best_val
        val_loss = evaluate(model, val, T, cfg["micro_batch"], rank, world, device, autocast)
        say(f"step {step:>6} | val loss {val_loss:.4f} | val ppl {math.exp(val_loss):.2f}")
        record({"step": step, "val_loss": val_loss, "val_ppl": math.exp(val_loss)})
        improved = best_val is None or val_loss < best_val
        best_val = val_loss if improved else best_val
        if master and step > 0:
            save_checkpoint(ckpt_path, raw, optimizer, cfg, step, loader.seen, val_loss, best_val)
            if improved:
                save_checkpoint(os.path.join(cfg["out_dir"], "ckpt_best.pt"), raw, optimizer, cfg, step,
                                loader.seen, val_loss, best_val)

    # Preemption: finish the current step, save, and leave. Every rank checks the flag of every
    # other rank (it travels with the loss all-reduce), so they all stop at the same step.
    stop = {"signal": 0}
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGUSR1):
        signal.signal(sig, lambda s, _: stop.update(signal=s))

    if step == 0:
        eval_and_save()
    start = first = step
    t0, tokens_since = time.time(), 0
    end = min(cfg["max_steps"], step + cfg["run_steps"]) if cfg["run_steps"] else cfg["max_steps"]
    while step < end:
        lr = lr_at(cfg, step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        loss_sum = torch.zeros((), device=device)
        for micro in range(accum):
            x, y = loader.batch(loader.seen + (micro * world + rank) * cfg["micro_batch"], cfg["micro_batch"])
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            # Gradients are averaged across ranks only on the last micro-step: no_sync must wrap the
            # forward pass too, since DDP arms its all-reduce hooks there.
            last = micro == accum - 1
            with (train_model.no_sync() if world > 1 and not last else nullcontext()), autocast:
                _, loss = train_model(x, y)
                (loss / accum).backward()
            loss_sum += loss.detach() / accum
        loader.seen += seqs
        shared = torch.stack([loss_sum.float(), torch.tensor(float(stop["signal"]), device=device)])
        if world > 1:
            dist.all_reduce(shared)
        train_loss, stop_now = shared[0].item() / world, shared[1].item() > 0
        if not math.isfinite(train_loss):
            say(f"error: loss is {train_loss} at step {step + 1}; stopping without saving, "
                f"{ckpt_path} holds the last good state. Try a lower --lr or --grad_clip.", file=sys.stderr)
            sys.exit(3)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg["grad_clip"] or float("inf"))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        tokens_since += seqs * T
        if step % cfg["log_interval"] == 0 or step == end:
            if dev_type == "cuda":
                torch.cuda.synchronize()
            dt = (time.time() - t0) / max(1, step - first)
            tok_s = tokens_since / (time.time() - t0)
            mfu = flops_token * tok_s / (peak * world) if peak else None
            say(f"step {step:>6}/{cfg['max_steps']} | loss {train_loss:.4f} | lr {lr:.2e} | grad "
                f"{grad_norm.item():.3f} | {1000 * dt:.0f} ms | {tok_s:,.0f} tok/s | {tok_s / world:,.0f} "
                f"tok/s/dev | MFU " + (f"{100 * mfu:.1f}%" if mfu else "n/a"))
            record({"step": step, "loss": train_loss, "lr": lr, "grad_norm": grad_norm.item(),
                    "ms": 1000 * dt, "tok_s": tok_s, "mfu": mfu, "tokens": loader.seen * T})
            first, t0, tokens_since = step, time.time(), 0
        if step % cfg["eval_interval"] == 0 or step == cfg["max_steps"]:
            eval_and_save()
            first, t0, tokens_since = step, time.time(), 0  # keep evaluation out of the timing
        elif (stop_now or step == end) and master:
            save_checkpoint(ckpt_path, raw, optimizer, cfg, step, loader.seen, val_loss, best_val)
        if stop_now:
            say(f"stopped by signal {stop['signal'] or 'on another rank'} at step {step}; resume with --resume=true")
            break
        if step == start + 1:  # the first step compiles: keep it out of the timing too
            first, t0, tokens_since = step, time.time(), 0
    if world > 1:
        dist.destroy_process_group()


if __name__ == "__main__":
    try:
        main(sys.argv[1:])
    except (ConfigError, ShardError) as e:
        if int(os.environ.get("RANK", 0)) == 0:
            print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
