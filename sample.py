"""
sample.py: look at what a model writes. KV-cached sampling from any checkpoint of this project.

    python sample.py --out_dir=out/tiny --start="Hello" --num_samples=2 --max_new_tokens=100
    python sample.py --ckpt=out/crown/ckpt_last.pt --start=FILE:prompt.txt --temperature=0 --top_k=None

Importable without side effects: bench.py uses `generate` and `load_model`.
"""
import argparse
import codecs
import os
import pickletools
import re
import sys
import warnings
from contextlib import nullcontext

import tiktoken
import torch

import lws

GPT2_VOCAB = 50257  # real GPT-2 tokens; the model has 50304 logit rows (padded for fast matmuls)
EOT = 50256         # <|endoftext|>


def pickled_names(path):
    """The names a plain pickle file would import, read by pickletools without running anything
    (torch's safe loader stops at the first unsupported opcode before it sees them)."""
    names, strings = [], []
    try:
        with open(path, "rb") as f:
            for op, arg, _ in pickletools.genops(f):
                if op.name in ("GLOBAL", "INST"):
                    names.append(arg.replace(" ", "."))
                elif op.name == "STACK_GLOBAL":
                    names.append(".".join(strings[-2:]))
                elif isinstance(arg, str):
                    strings.append(arg)
    except Exception:  # not a pickle at all
        return []
    return names


def load_model(path_or_dir, device="cpu"):
    """(model in eval mode, checkpoint dict). A folder means its ckpt_best.pt, else its ckpt_last.pt.
    Bad input exits with a one-line "error: ..." (these are command-line tools, not a library)."""
    path = path_or_dir
    if os.path.isdir(path):  # a folder: its best checkpoint, else its last
        path = next((os.path.join(path, n) for n in ("ckpt_best.pt", "ckpt_last.pt")
                     if os.path.isfile(os.path.join(path, n))), path)
    if not os.path.isfile(path):
        folder = path if os.path.isdir(path) else os.path.dirname(path) or "."
        held = sorted(os.listdir(folder)) if os.path.isdir(folder) else None
        what = "does not exist" if held is None else f"holds: {', '.join(held[:20])}" if held else "is empty"
        where = f"no ckpt_best.pt or ckpt_last.pt in {path}" if path == folder else f"no checkpoint at {path}"
        sys.exit(f"error: {where} ({folder} {what})")
    try:
        # weights_only=True unpickles tensors and plain containers only. A full unpickler would run
        # any code the file names, so a file that needs one is refused, never retried unsafely.
        with warnings.catch_warnings():  # keep the error on one line: no "pickle protocol" chatter
            warnings.simplefilter("ignore")
            ckpt = torch.load(path, map_location=device, weights_only=True)
    except Exception as e:
        unsafe = re.findall(r"GLOBAL ([\w.]+)", str(e)) or pickled_names(path)
        if unsafe:
            sys.exit(f"error: refusing {path}: loading it would need unsafe unpickling (it imports "
                     f"{unsafe[0]}, and unpickling can run code); checkpoints of this project never do")
        msg = str(e).strip()
        why = type(e).__name__ + (f": {msg}" if msg and "\n" not in msg and len(msg) < 100 else "")
        sys.exit(f"error: {path} is not a checkpoint of this project, or it is damaged ({why})")
    if not isinstance(ckpt, dict) or ckpt.get("format") != "lws-checkpoint":
        hint = " (a bare state dict? train.py writes the weights together with their config)" \
            if isinstance(ckpt, dict) and all(isinstance(v, torch.Tensor) for v in ckpt.values()) else ""
        sys.exit(f"error: {path} is not a checkpoint of this project: no 'format': 'lws-checkpoint'{hint}")
    if ckpt.get("version", 1) > 1:
        sys.exit(f"error: {path} is checkpoint version {ckpt['version']}; this sample.py reads version 1")
    try:
        cfg = lws.LWSConfig(**ckpt["model_config"])
        with torch.device(device):  # build on the device directly: no CPU init, no copy
            model = lws.GPT(cfg)
        # compiled (`_orig_mod.`) or DDP (`module.`) models prefix every key: strip them
        model.load_state_dict(lws.clean_state_dict(ckpt["model"]))
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        why = f"it has no {e}" if isinstance(e, KeyError) else " ".join(str(e).split())[:300]
        sys.exit(f"error: {path}: cannot rebuild the model from it: {why}")
    return model.eval(), ckpt


def filter_logits(logits, top_k=None, top_p=None):
    """Set to -inf every logit outside the top_k largest and outside the nucleus: the fewest most
    likely tokens whose probabilities add up to at least top_p. The most likely token always stays."""
    if top_k is not None and 0 < top_k < logits.size(-1):
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs >= top_p  # the mass *before* a token already reaches top_p
        drop[..., 0] = False
        logits = logits.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    return logits


def window_note(prompt_len, max_new_tokens, block_size):
    """What generate says (once, on stderr) when the text will not fit in the context."""
    if prompt_len + max_new_tokens > block_size:
        return (f"note: prompt ({prompt_len} tokens) + {max_new_tokens} new tokens exceed the context of "
                f"{block_size}: the window slides, the model seeing the last {max(1, block_size // 2)} to "
                f"{block_size} tokens")


@torch.no_grad()
def generate(model, idx, max_new_tokens, temperature=1.0, top_k=None, top_p=None, eos=None, use_cache=True,
             generator=None, on_token=None, n_vocab=GPT2_VOCAB, verbose=True):
    """Continue the token ids idx (B, T) by max_new_tokens; returns (B, T + new). temperature=0 is
    greedy. Stops early once every row has produced `eos` (finished rows are padded with it).
    on_token(ids) gets each step's (B,) new ids as they come. Precision is the caller's: wrap the
    call in torch.autocast for bf16. Any length works: past the context the window slides (below)."""
    block = model.cfg.block_size
    B = idx.size(0)
    # The sliding window, the same in both paths so that they give the same tokens: the model sees
    # idx[:, start:]. RoPE positions are absolute (the first token the model sees is position 0),
    # so a full cache cannot just drop its oldest entries: every cached key was rotated for a
    # position that would shift. When the window is full we restart it from the most recent
    # block//2 tokens and re-prefill a fresh cache with them: one forward over block//2 tokens
    # buys block//2 cheap steps, and the model never sees less than half its context.
    keep = max(1, block // 2)
    start = max(0, idx.size(1) - block)  # a prompt longer than the context keeps its end
    note = window_note(idx.size(1), max_new_tokens, block)
    if verbose and note:
        print(note, file=sys.stderr)
    cache = None
    if use_cache:  # each layer's buffers have that layer's own number of KV heads
        cache = lws.KVCache(model, B, device=idx.device, dtype=next(model.parameters()).dtype)
        logits = model(idx[:, start:], kv_cache=cache)[0][:, -1]  # prefill: the prompt in one pass
    done = torch.zeros(B, dtype=torch.bool, device=idx.device)
    for step in range(max_new_tokens):
        if not use_cache:  # recompute the whole window for every token, as nanoGPT does
            logits = model(idx[:, start:])[0][:, -1]
        # Sample in fp32 from the real vocabulary only: rows >= n_vocab are padding, never trained
        # towards, and an id >= n_vocab would break the tokenizer.
        logits = logits[:, :n_vocab].float()
        if temperature == 0:
            nxt = logits.argmax(-1)
        else:
            logits, ids = logits / temperature, None
            if top_k is not None and 0 < top_k < logits.size(-1):  # draw among the top_k only: a few
                logits, ids = torch.topk(logits, top_k, dim=-1)     # hundred numbers, not 50257
            probs = filter_logits(logits, top_p=top_p).softmax(-1)
            nxt = torch.multinomial(probs, 1, generator=generator)
            nxt = (nxt if ids is None else ids.gather(-1, nxt))[:, 0]
        if eos is not None:
            nxt = torch.where(done, torch.full_like(nxt, eos), nxt)
            done |= nxt == eos
        idx = torch.cat((idx, nxt[:, None]), dim=1)
        if on_token is not None:
            on_token(nxt)
        if step == max_new_tokens - 1 or (eos is not None and bool(done.all())):
            break
        if idx.size(1) - start > block:  # the new token does not fit: slide the window
            start = idx.size(1) - keep
            if use_cache:
                cache.reset()  # reusing the buffers is a fresh cache: entries past pos are never read
                logits = model(idx[:, start:], kv_cache=cache)[0][:, -1]
        elif use_cache:
            logits = model(nxt[:, None], kv_cache=cache)[0][:, -1]  # one token: O(context) work
    return idx


# ----------------------------------------------------------------------------------------------

def flag(s):
    """Booleans as nanoGPT configs write them: --compile, --compile=True, --compile=0 ..."""
    if s.lower() not in ("1", "true", "yes", "0", "false", "no"):
        raise ValueError(s)
    return s.lower() in ("1", "true", "yes")


def optional(kind):
    """--top_k=None (or 0) switches an option off, even where its default is a number."""
    return lambda s: None if s.lower() in ("none", "0", "") else kind(s)


def main(argv=None):
    p = argparse.ArgumentParser(description="Sample from a checkpoint of this project.")
    p.add_argument("--out_dir", default="out", help="folder holding ckpt_best.pt or ckpt_last.pt")
    p.add_argument("--ckpt", default=None, help="a checkpoint file or folder (overrides --out_dir)")
    p.add_argument("--start", default="\n", help='the prompt, or FILE:path ("<|endoftext|>" allowed)')
    p.add_argument("--num_samples", type=int, default=3)
    p.add_argument("--max_new_tokens", type=int, default=200)
    p.add_argument("--temperature", type=float, default=0.8, help="0 is greedy")
    p.add_argument("--top_k", type=optional(int), default=200)
    p.add_argument("--top_p", type=optional(float), default=None)
    p.add_argument("--seed", type=int, default=1337)
    p.add_argument("--stop_at_eos", type=flag, nargs="?", const=True, default=False,
                   help="end a sample at <|endoftext|>")
    p.add_argument("--no_cache", type=flag, nargs="?", const=True, default=False,
                   help="recompute the whole context for every token (slow; for comparison)")
    p.add_argument("--device", default="auto", help="auto (cuda > mps > cpu), cuda, cuda:1, mps, cpu")
    p.add_argument("--dtype", default="auto", choices=["auto", "float32", "bfloat16", "float16"],
                   help="autocast precision; auto is bfloat16 on a GPU, float32 on the CPU")
    p.add_argument("--compile", type=flag, nargs="?", const=True, default=False)
    args = p.parse_args(argv)

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    dtype = args.dtype if args.dtype != "auto" else "float32" if device == "cpu" else "bfloat16"
    ctx = nullcontext() if dtype == "float32" else torch.autocast(device.split(":")[0], getattr(torch, dtype))

    model, ckpt = load_model(args.ckpt or args.out_dir, device)
    enc = tiktoken.get_encoding("gpt2")
    if model.cfg.vocab_size < enc.n_vocab:
        sys.exit(f"error: the model has {model.cfg.vocab_size} token rows, fewer than GPT-2's {enc.n_vocab}")
    cfg, vl = model.cfg, ckpt.get("val_loss")
    print(f"{cfg.schedule}, {cfg.n_layer} layers, {model.num_params() / 1e6:.1f}M parameters, step "
          f"{ckpt.get('step', '?')}" + (f", val loss {vl:.4f}" if vl is not None else "") +
          f" | {device} {dtype}{', no cache' if args.no_cache else ''}", file=sys.stderr)
    if args.compile:
        # dynamic=True: the cache grows every step; compile for any length, not once per length
        model = torch.compile(model, dynamic=True)

    start = args.start
    if start.startswith("FILE:"):
        try:
            with open(start[5:], encoding="utf-8") as f:
                start = f.read()
        except OSError as e:
            sys.exit(f"error: cannot read the prompt file: {e}")
    ids = enc.encode(start, allowed_special={"<|endoftext|>"}) or [EOT]  # empty prompt: a new document
    x = torch.tensor([ids], dtype=torch.long, device=device)
    gen = torch.Generator(device=device).manual_seed(args.seed)  # same seed, same text
    note = window_note(len(ids), args.max_new_tokens, cfg.block_size)
    if note:  # said once, up front, rather than in the middle of a streamed sample
        print(note, file=sys.stderr)

    for _ in range(args.num_samples):
        # A token can end in the middle of a UTF-8 character (BPE works on bytes): decode the byte
        # stream incrementally and print characters only once they are complete.
        utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        out = sys.stdout

        def show(tok):
            out.write(utf8.decode(enc.decode_single_token_bytes(tok[0].item())))
            out.flush()

        out.write(start)
        with ctx:
            generate(model, x, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                     eos=EOT if args.stop_at_eos else None, use_cache=not args.no_cache, generator=gen,
                     on_token=show, n_vocab=enc.n_vocab, verbose=False)
        out.write(utf8.decode(b"", final=True) + "\n---------------\n")
        out.flush()


if __name__ == "__main__":
    main()
