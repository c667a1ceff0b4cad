"""Tokenize FineWeb, FineWeb-Edu, the offline `pydocs` corpus or your own text into llm.c shards.

    python prepare_data.py --dataset pydocs                  # offline: ~3.4M tokens of Python docs
    python prepare_data.py --dataset fineweb --sample 10BT   # the paper's 10M val + 5.11B train
    python prepare_data.py --input corpus/ --name mine       # your .txt / .jsonl / .parquet files
    python prepare_data.py --bench                           # tokens/s against bare tiktoken

Shard format (llm.c, modded-nanogpt, the public fineweb10B-gpt2 shards): a 1024-byte header of 256
little-endian int32 [20240520, 1, ntokens, 0, ...], then ntokens little-endian uint16 GPT-2 tokens,
<|endoftext|> (50256) before every document. Shard 0, <name>_val_000000.bin, is validation; then
<name>_train_000001.bin, ... Interrupted? Run the same command again: it resumes and ends with the
bytes an uninterrupted run writes. train.py reads the shards with read_shard() and find_shards().
"""
import argparse
import functools
import glob
import hashlib
import json
import os
import re
import shutil
import sys
import time

import numpy as np  # the heavy imports (tiktoken, pyarrow, requests, tqdm) wait until needed

MAGIC, VERSION, HEADER_BYTES = 20240520, 1, 1024  # header = 256 little-endian int32
EOT = 50256  # <|endoftext|>
DATASETS = {"fineweb": "HuggingFaceFW/fineweb", "fineweb-edu": "HuggingFaceFW/fineweb-edu"}
SAMPLES = ("10BT", "100BT", "350BT")
DEFAULT_MAX_TOKENS = 5_120_000_000  # the paper's budget: 10M validation + 5.11B training tokens
RETRIES, BACKOFF_S = 6, 1.0  # attempts per HTTP request; first wait in seconds, doubled each time
CHUNK_BYTES = 1 << 16  # download read size: a dropped connection loses at most one chunk
TASK_CHARS = 1 << 18  # text per tokenizer task: large enough to hide IPC, small enough to balance
SKIP_DIRS = {"site-packages", "dist-packages", "test", "tests", "idlelib", "turtledemo", "__pycache__"}


class ShardError(ValueError):
    """A token shard is missing or malformed; the message names the file and what is wrong."""


class PrepError(Exception):
    """Bad input or environment; main() prints it as one line naming the problem and the fix."""


# ----------------------------------------------------------------------------- the shard format
def write_shard(path, tokens):
    tokens = np.asarray(tokens)
    fits = tokens.dtype == np.uint16 or not tokens.size or (tokens.min() >= 0 and tokens.max() < 1 << 16)
    if tokens.ndim != 1 or not fits:
        raise ValueError(f"{path}: tokens must be 1-D, with ids in [0, 65536) to fit uint16")
    header = np.zeros(256, dtype="<i4")
    header[:3] = MAGIC, VERSION, len(tokens)
    _write_atomic(path, header.tobytes(), np.ascontiguousarray(tokens, dtype="<u2").data)


def _write_atomic(path, *blobs):
    """Write under a temporary name, then rename: a killed run never leaves a half-written file."""
    with open(path + ".tmp", "wb") as f:
        f.writelines(blobs)
        f.flush()
        os.fsync(f.fileno())  # the bytes reach the disk before the name says the file is complete
    os.replace(path + ".tmp", path)


def read_header(path):
    """Check a shard's magic, version and file size; return its number of tokens."""
    try:
        with open(path, "rb") as f:
            head, size = f.read(HEADER_BYTES), os.fstat(f.fileno()).st_size
    except OSError as e:
        raise ShardError(f"{path}: cannot read shard ({e.strerror})") from None
    if len(head) < HEADER_BYTES:
        raise ShardError(f"{path}: truncated: {len(head)} bytes, less than the {HEADER_BYTES}-byte "
                         "header; delete it and rerun prepare_data.py")
    magic, version, n = np.frombuffer(head, dtype="<i4", count=3).tolist()
    if magic != MAGIC:
        raise ShardError(f"{path}: bad magic {magic} (expected {MAGIC}): not an llm.c token shard")
    if version != VERSION:
        raise ShardError(f"{path}: unsupported shard version {version} (expected {VERSION})")
    if n < 0 or size != HEADER_BYTES + 2 * n:
        raise ShardError(f"{path}: {size} bytes but the header says {n} tokens ({HEADER_BYTES + 2 * n} "
                         "bytes): truncated or corrupt; delete it and rerun prepare_data.py")
    return n


def read_shard(path):
    """A shard's tokens as a read-only memmap: constant memory whatever the shard size."""
    n = read_header(path)
    if n == 0:
        return np.zeros(0, dtype=np.uint16)  # mmap cannot map zero bytes
    return np.memmap(path, dtype=np.uint16, mode="r", offset=HEADER_BYTES, shape=(n,))


def find_shards(data_dir):
    """(val_paths, train_paths), each sorted; a one-line ShardError if either is missing."""
    pattern = os.path.join(glob.escape(data_dir), "*_{}_*.bin")
    val, train = (sorted(glob.glob(pattern.format(split))) for split in ("val", "train"))
    if not val or not train:
        found = f"{len(val)} val and {len(train)} train shards" if os.path.isdir(data_dir) else "missing"
        raise ShardError(f"no data in {data_dir} ({found}): run `python prepare_data.py --dataset "
                         "pydocs` (or --dataset fineweb) first")
    return val, train


def shard_ok(path, ntokens):
    try:
        return read_header(path) == ntokens
    except ShardError:
        return False


class ShardWriter:
    """Cuts the token stream into shards: shard 0 holds val_tokens, the others shard_tokens each.
    As in llm.c a shard is filled exactly and the document that overflows it continues in the
    next, so the shards are a pure function of the ordered stream; that is what makes resume exact."""

    def __init__(self, out_dir, name, val_tokens, shard_tokens, budget=0):
        self.out_dir, self.name, self.sizes, self.budget = out_dir, name, (val_tokens, shard_tokens), budget
        self.index, self.written = 0, 0  # the next shard; tokens in finished shards
        self.buf, self.fill = None, 0

    def path(self, index):
        return os.path.join(self.out_dir, f"{self.name}_{'val' if index == 0 else 'train'}_{index:06d}.bin")

    def next_size(self):  # a full shard, or what is left of the --max_tokens budget
        size = self.sizes[self.index > 0]
        return min(size, self.budget - self.written) if self.budget else size

    @property
    def full(self):  # the budget is reached: add() flushes the shard that reaches it
        return bool(self.budget) and self.written >= self.budget

    def add(self, tokens):
        """Append tokens, up to the budget; return how many were taken."""
        taken = 0
        while taken < len(tokens) and not self.full:
            if self.buf is None:
                self.buf = np.empty(self.next_size(), np.uint16)
            n = min(len(tokens) - taken, len(self.buf) - self.fill)
            self.buf[self.fill:self.fill + n] = tokens[taken:taken + n]
            self.fill, taken = self.fill + n, taken + n
            if self.fill == len(self.buf):
                self.flush()
        return taken

    def flush(self):
        if self.fill:
            write_shard(self.path(self.index), self.buf[:self.fill])
            self.written, self.index = self.written + self.fill, self.index + 1
        self.buf, self.fill = None, 0

    def skip_done(self):
        """Advance past the full shards a previous run finished. A short last shard is rewritten:
        it ended a budget or a corpus that may have grown since."""
        while (n := self.next_size()) == self.sizes[self.index > 0] and shard_ok(self.path(self.index), n):
            self.written, self.index = self.written + n, self.index + 1


# ----------------------------------------------------------------------------- downloads
def _retry(attempt, why, failure, wait=0):
    """Wait before the next try, twice as long as before; after RETRIES tries, raise PrepError(failure)."""
    if attempt + 1 >= RETRIES:
        raise PrepError(failure)
    delay = max(BACKOFF_S * 2 ** attempt, wait)
    _log(f"{why}; retrying in {delay:.1f}s")
    time.sleep(delay)


def _get(url, offset=0):
    """Streaming GET of the bytes from offset on; retries 429, 5xx and network errors."""
    import requests
    headers = {"Accept-Encoding": "identity"}  # byte counts must be file offsets for Range
    if offset:
        headers["Range"] = f"bytes={offset}-"
    if os.environ.get("HF_TOKEN"):  # requests drops it when redirected to the CDN's host
        headers["Authorization"] = f"Bearer {os.environ['HF_TOKEN']}"
    for attempt in range(RETRIES):
        try:
            r = requests.get(url, headers=headers, stream=True, timeout=(20, 60))
        except (requests.ConnectionError, requests.Timeout) as e:
            why, wait = type(e).__name__, 0
        else:
            if r.status_code < 400:
                return r
            r.close()
            if r.status_code < 500 and r.status_code != 429:
                hint = " (gated or private: set HF_TOKEN)" if r.status_code in (401, 403) else ""
                raise PrepError(f"GET {url} returned HTTP {r.status_code}{hint}")
            why, wait = f"HTTP {r.status_code}", r.headers.get("Retry-After", "")
            wait = min(int(wait), 60) if wait.isdigit() else 0
        _retry(attempt, f"{why} from {url}", f"GET {url} failed {RETRIES} times (last: {why}); check the "
               "network, HF_ENDPOINT and HF_TOKEN, then rerun to resume", wait)


def list_remote(endpoint, repo, sample):
    """The parquet files of a Hub dataset folder with size and sha256, page by page."""
    from urllib.parse import urljoin
    url, files = f"{endpoint}/api/datasets/{repo}/tree/main/sample/{sample}?recursive=true", []
    while url:
        r = _get(url)
        try:
            page = r.json()
        except ValueError:
            raise PrepError(f"{url} did not return a JSON file list; check HF_ENDPOINT") from None
        for e in page:
            if e.get("type") == "file" and e["path"].endswith(".parquet"):
                lfs = e.get("lfs") or {}  # lfs.oid is the sha256 of the content
                files.append({"name": e["path"], "kind": "remote", "size": lfs.get("size", e["size"]),
                              "sha256": lfs.get("oid"),
                              "url": f"{endpoint}/datasets/{repo}/resolve/main/{e['path']}"})
        url = urljoin(url, r.links["next"]["url"]) if "next" in r.links else None
    if not files:
        raise PrepError(f"no parquet files listed for {repo} sample/{sample} at {endpoint}")
    return sorted(files, key=lambda f: f["name"])


def download(src, dest):
    """Download to dest.part, then check size and sha256 and rename; a mismatch gets one retry."""
    part, size, name, folder = dest + ".part", src["size"], src["name"], os.path.dirname(dest)
    free = shutil.disk_usage(folder).free
    if free < 2 * size:  # the parquet file, and about as many bytes again of shards
        raise PrepError(f"not enough disk space in {folder}: {name} needs about {2 * size / 1e9:.1f} GB, "
                        f"{free / 1e9:.1f} GB free; free some or pick another --out_dir")
    for attempt in (1, 2):
        _fetch(src, part)
        digest = file_sha256(part)
        if os.path.getsize(part) == size and digest == (src["sha256"] or digest):
            return os.replace(part, dest)
        os.remove(part)
        if attempt == 2:
            raise PrepError(f"{name}: sha256 mismatch twice (expected {src['sha256']}, got {digest}) from "
                            f"{src['url']}: the server sends corrupt data; retry later or change HF_ENDPOINT")
        _log(f"{name}: size or sha256 mismatch; deleted, downloading again")


def _fetch(src, part):
    """Fill part with the file's bytes; after a dropped connection, continue with a Range request."""
    import requests
    from tqdm import tqdm
    size, name = src["size"], src["name"]
    have, failures = os.path.getsize(part) if os.path.exists(part) else 0, 0
    with tqdm(total=size, initial=have, unit="B", unit_scale=True, unit_divisor=1024,
              desc=os.path.basename(name), leave=False, mininterval=1.0) as bar:
        while have < size:
            r = _get(src["url"], have)  # the resolve URL each time: the CDN URL is signed and expires
            try:
                if r.status_code != 206:  # a full answer (the server ignored Range): start over
                    have = 0
                    bar.reset()
                with open(part, "r+b" if have else "wb") as f:
                    f.seek(have)
                    f.truncate()
                    for chunk in r.iter_content(CHUNK_BYTES):
                        if f.tell() == 0 and not chunk.startswith(b"PAR1"):
                            what = "an HTML page" if chunk.lstrip()[:1] == b"<" else repr(chunk[:16])
                            raise PrepError(f"{name}: the server sent {what} instead of parquet (no PAR1 "
                                            f"magic) from {r.url}; check HF_TOKEN, HF_ENDPOINT or a proxy")
                        f.write(chunk)
                        have, failures = have + len(chunk), 0
                        bar.update(len(chunk))
                if have < size:
                    raise requests.ConnectionError("connection closed early")
            except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError
                    ) as e:
                _retry(failures, f"{name}: {type(e).__name__} at byte {have}",
                       f"{name}: download keeps failing ({type(e).__name__}); rerun to resume")
                failures += 1
            finally:
                r.close()


def file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 23):
            h.update(chunk)
    return h.hexdigest()


def _log(msg):
    from tqdm import tqdm
    tqdm.write(msg, file=sys.stderr)  # prints above the progress bars instead of through them


# ----------------------------------------------------------------------------- documents
def local_sources(paths):
    """The files behind --input: files in the order given, directories expanded and sorted."""
    files, kinds = [], (".txt", ".jsonl", ".parquet")
    for p in paths:
        if os.path.isdir(p):
            found = sorted(os.path.join(d, f) for d, _, fs in os.walk(p) for f in fs if f.endswith(kinds))
            if not found:
                raise PrepError(f"{p}: no .txt, .jsonl or .parquet files in this folder")
            files += found
        elif not os.path.isfile(p):
            raise PrepError(f"{p}: no such file or folder")
        elif not p.endswith(kinds):
            raise PrepError(f"{p}: unsupported input type; use .txt (one document per file), .jsonl "
                            "(a 'text' field per line) or .parquet (a 'text' column)")
        else:
            files.append(p)
    return [{"name": os.path.abspath(f), "kind": os.path.splitext(f)[1][1:], "size": os.path.getsize(f),
             "sha256": file_sha256(f)} for f in files]


def documents(kind, path):
    """The documents of one file, one at a time: memory stays bounded whatever the file size."""
    if kind == "txt":
        with open(path, "rb") as f:
            data = f.read()
        try:
            yield data.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PrepError(f"{path}: not valid UTF-8 (byte {e.start}); convert it (e.g. `iconv -f "
                            "latin1 -t utf-8`) or leave it out") from None
    elif kind == "jsonl":
        with open(path, "rb") as f:
            for i, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError as e:
                    raise PrepError(f"{path}:{i}: not UTF-8 JSON ({e})") from None
                if not isinstance(rec, dict) or not isinstance(rec.get("text"), str):
                    found = ", ".join(rec) if isinstance(rec, dict) else type(rec).__name__
                    raise PrepError(f"{path}:{i}: no string 'text' field (found: {found}); each line "
                                    'must be an object like {"text": "..."}')
                yield rec["text"]
    else:
        import pyarrow.parquet as pq
        try:
            pf = pq.ParquetFile(path)
        except Exception as e:  # pyarrow raises ArrowInvalid, OSError, ... for a damaged file
            raise PrepError(f"{path}: not a readable parquet file ({e})") from None
        if "text" not in pf.schema_arrow.names:
            raise PrepError(f"{path}: no 'text' column (found: {', '.join(pf.schema_arrow.names)}); "
                            "rename the column that holds the documents to 'text'")
        for batch in pf.iter_batches(batch_size=1024, columns=["text"]):  # never the whole file
            yield from (t for t in batch.column(0).to_pylist() if t is not None)


def pydocs_items():
    """(module, path) for the .py files of the stdlib, numpy and torch, and ("topic NAME", None)
    for the language reference. Nothing is imported: importing runs code and is slow."""
    import importlib.util
    import sysconfig
    from pydoc_data.topics import topics
    roots = [("", sysconfig.get_paths()["stdlib"])]
    for pkg in ("numpy", "torch"):
        spec = importlib.util.find_spec(pkg)  # finds the folder without importing the package
        if spec and spec.submodule_search_locations:
            roots.append((pkg, list(spec.submodule_search_locations)[0]))
    items = [(f"topic {t}", None) for t in topics]
    for pkg, root in roots:
        for d, dirs, files in os.walk(root):
            dirs[:] = [x for x in dirs if x not in SKIP_DIRS and not x.startswith(".")]
            for f in files:
                if f.endswith(".py"):
                    mod = os.path.relpath(os.path.join(d, f[:-3]), root).replace(os.sep, ".")
                    mod = ".".join(x for x in (pkg, mod.removesuffix("__init__").rstrip(".")) if x)
                    items.append((mod, os.path.join(d, f)))
    # A fixed hash order, not alphabetical: still deterministic, but it mixes stdlib, numpy, torch
    # and the reference, so the validation shard (the first tokens) looks like the training ones.
    return sorted(items, key=lambda it: hashlib.sha1(it[0].encode()).hexdigest())


def module_doc(item):
    """One pydocs document: a module's docstrings under the qualified names and signatures."""
    import ast
    name, path = item
    if path is None:
        from pydoc_data.topics import topics
        return f"Python language reference: {name[6:]}\n\n{topics[name[6:]]}"
    try:
        with open(path, "rb") as f:
            tree = ast.parse(f.read())
    except (SyntaxError, ValueError, RecursionError, OSError):
        return ""
    parts = [ast.get_docstring(tree) or ""]

    def visit(node, prefix):
        for child in node.body:
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                qual, doc = prefix + child.name, ast.get_docstring(child)
                if doc and isinstance(child, ast.ClassDef):
                    parts.append(f"class {qual}\n{doc}")
                elif doc:
                    parts.append(f"def {qual}({ast.unparse(child.args)})\n{doc}")
                if isinstance(child, ast.ClassDef):
                    visit(child, qual + ".")
    visit(tree, "")
    return f"Module {name}\n\n" + "\n\n".join(p for p in parts if p) if any(parts) else ""


def tasks(src, path):
    """A source's documents grouped into tokenizer tasks of about TASK_CHARS characters."""
    if src["kind"] == "pydocs":  # the workers parse the files too: the slow part runs in parallel
        items = pydocs_items()
        yield from (("py", items[i:i + 8]) for i in range(0, len(items), 8))
        return
    batch, chars = [], 0
    for doc in documents(src["kind"], path) if path else src["docs"]:
        batch.append(doc)
        chars += len(doc)
        if chars >= TASK_CHARS:
            yield ("text", batch)
            batch, chars = [], 0
    if batch:
        yield ("text", batch)


# ----------------------------------------------------------------------------- tokenizing
@functools.cache  # once per process: each worker loads its own
def gpt2():
    import tiktoken
    return tiktoken.get_encoding("gpt2")


def encode_task(task):
    """Tokenize a batch of documents into one uint16 array, EOT before each document. An array
    pickles as one buffer, far cheaper to send back than lists of Python ints."""
    kind, items = task  # pydocs items are files; those without docstrings give no document
    ids = []
    for text in items if kind == "text" else filter(None, map(module_doc, items)):
        ids.append(EOT)
        ids += gpt2().encode_ordinary(text)
    return np.array(ids, np.uint16)


def make_pool(workers):
    """Tokenizer processes; with workers <= 1, a thread of this one."""
    import multiprocessing.dummy
    import signal
    if workers <= 1:
        return multiprocessing.dummy.Pool(1)
    # The workers ignore Ctrl-C: the parent handles it and stops the pool, no traceback per worker.
    return multiprocessing.Pool(workers, signal.signal, (signal.SIGINT, signal.SIG_IGN))


def tokenized(pool, task_iter, workers):
    """encode_task over the tasks, results in order. Pool.imap would read its whole input ahead
    into a queue; this keeps at most 4 tasks per worker in flight, so memory stays flat."""
    from collections import deque
    pending = deque()
    for task in task_iter:
        pending.append(pool.apply_async(encode_task, (task,)))
        if len(pending) >= 4 * workers:
            yield pending.popleft().get()
    while pending:
        yield pending.popleft().get()


# ----------------------------------------------------------------------------- the run
def _versions(*pkgs):
    from importlib.metadata import PackageNotFoundError, version
    out = {"python": sys.version.split()[0]}
    for p in pkgs:
        try:
            out[p] = version(p)
        except PackageNotFoundError:
            out[p] = None
    return out


def _load_json(path):
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _save_json(path, obj):
    _write_atomic(path, json.dumps(obj, indent=1).encode())


def resolve_source(args):
    """(name, description of the source, function that lists its files) from the arguments."""
    if args.input:
        if args.dataset:
            raise PrepError("give --dataset or --input, not both")
        return args.name or "custom", {"input": [os.path.abspath(p) for p in args.input]}, \
            lambda: local_sources(args.input)
    if args.dataset == "pydocs":  # a new numpy or torch changes the corpus: part of the identity
        return args.name or "pydocs", {"dataset": "pydocs", **_versions("numpy", "torch")}, \
            lambda: [{"name": "pydocs", "kind": "pydocs", "size": None, "sha256": None}]
    if args.dataset not in DATASETS:
        raise PrepError(f"unknown --dataset {args.dataset!r}: choose one of "
                        f"{', '.join([*DATASETS, 'pydocs'])}, or give --input FILES")
    if args.sample not in SAMPLES:
        raise PrepError(f"unknown --sample {args.sample!r} for {args.dataset}: choose one of "
                        f"{', '.join(SAMPLES)}")
    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    repo, name = DATASETS[args.dataset], args.name or args.dataset + args.sample[:-1]  # fineweb10B, ...
    return name, {"dataset": args.dataset, "repo": repo, "sample": args.sample}, \
        lambda: list_remote(endpoint, repo, args.sample)


def prepare(args):
    from tqdm import tqdm
    name, source, list_sources = resolve_source(args)
    if args.val_tokens <= 0 or args.shard_tokens <= 0 or 0 < args.max_tokens <= args.val_tokens:
        raise PrepError("need --val_tokens > 0, --shard_tokens > 0, and --max_tokens 0 (all) or more than "
                        "--val_tokens: shard 0 is validation, training shards come after it")
    out_dir = args.out_dir or os.path.join("data", name)
    os.makedirs(out_dir, exist_ok=True)
    fp = {"name": name, "source": source, "tokenizer": "gpt2 (tiktoken encode_ordinary)", "eot": EOT,
          "val_tokens": args.val_tokens, "shard_tokens": args.shard_tokens}
    progress_path, manifest_path = (os.path.join(out_dir, f) for f in ("progress.json", "manifest.json"))
    progress, manifest = _load_json(progress_path), _load_json(manifest_path)
    old = (progress or manifest or {}).get("fingerprint")
    start_over = f"use another --out_dir, or delete {out_dir} to start over"
    if old is None and glob.glob(os.path.join(glob.escape(out_dir), "*.bin")):
        raise PrepError(f"{out_dir} holds .bin files that this script did not write (no progress.json); "
                        "use another --out_dir")
    if old is not None and old != fp:
        diff = "; ".join(f"{k}: {str(old.get(k))[:100]} there, {str(v)[:100]} now"
                         for k, v in fp.items() if old.get(k) != v)
        raise PrepError(f"{out_dir} holds shards from a different source or tokenizer ({diff}); {start_over}")
    if manifest and manifest["max_tokens"] == args.max_tokens and \
            all(shard_ok(os.path.join(out_dir, s["file"]), s["tokens"]) for s in manifest["shards"]):
        print(f"{out_dir} is complete ({manifest['total_tokens']:,} tokens); nothing to do")
        return manifest
    if manifest:  # about to change the shards: the folder is no longer complete
        os.remove(manifest_path)

    sources = list_sources()
    progress = progress or {"fingerprint": fp, "sources": []}
    writer = ShardWriter(out_dir, name, args.val_tokens, args.shard_tokens, args.max_tokens)
    writer.skip_done()
    # Restart at the first source not wholly inside the finished shards, and drop the tokens of it
    # that are already there. Tokenizing is deterministic, so the same bytes come out again.
    start, offset = 0, 0
    for j, rec in enumerate(progress["sources"]):
        if j >= len(sources) or (rec["name"], rec["sha256"]) != (sources[j]["name"], sources[j]["sha256"]):
            raise PrepError(f"{out_dir} was built from other source files ({os.path.basename(rec['name'])} "
                            f"differs); {start_over}")
        if offset + rec["tokens"] > writer.written:
            break
        start, offset = j + 1, offset + rec["tokens"]
    skip = writer.written - offset
    del progress["sources"][start:]
    _save_json(progress_path, progress)
    raw_dir, to_delete, saved = os.path.join(out_dir, "raw"), [], time.time()
    with make_pool(args.workers) as pool, tqdm(total=args.max_tokens or None, initial=writer.written,
                                               unit="tok", unit_scale=True, desc="tokens") as bar:
        for src in sources[start:]:
            if writer.full:
                break
            path = src["name"]
            if src["kind"] == "remote":
                os.makedirs(raw_dir, exist_ok=True)
                path = os.path.join(raw_dir, os.path.basename(src["name"]))
                if not os.path.exists(path):  # present: verified and renamed by an earlier run
                    download(src, path)
            count = 0
            for arr in tokenized(pool, tasks(src, path), args.workers):
                count, cut = count + len(arr), min(skip, len(arr))
                skip -= cut
                bar.update(writer.add(arr[cut:]))
                while to_delete and to_delete[0][0] <= writer.written:  # all its tokens are in shards
                    os.remove(to_delete.pop(0)[1])
                if writer.full:
                    break
            else:  # the whole source is tokenized: record it so that a resume can skip it
                progress["sources"].append(dict(src, tokens=count))
                if src["kind"] == "remote" or time.time() - saved > 2:
                    _save_json(progress_path, progress)  # always before its download may be deleted
                    saved = time.time()
                offset += count
                if src["kind"] == "remote" and not args.keep_raw:
                    to_delete.append((offset, path))
        writer.flush()
    _save_json(progress_path, progress)
    for f in os.listdir(out_dir):  # leftover .tmp files, and shards past the end of a longer earlier run
        m = re.fullmatch(re.escape(name) + r"_(val|train)_(\d{6})\.bin", f)
        if f.endswith(".tmp") or (m and int(m.group(2)) >= writer.index):
            os.remove(os.path.join(out_dir, f))
    used = progress["sources"][:]
    if writer.written > sum(rec["tokens"] for rec in used):  # --max_tokens stopped inside this one
        used.append(dict(sources[len(used)], tokens=None))
    shards = [{"file": os.path.basename(writer.path(i)), "tokens": read_header(writer.path(i))}
              for i in range(writer.index)]
    val = shards[0]["tokens"] if shards else 0
    manifest = {"fingerprint": fp, "max_tokens": args.max_tokens, "total_tokens": writer.written,
                "val_tokens": val, "train_tokens": writer.written - val, "shards": shards,
                "sources": used, "versions": _versions("tiktoken", "numpy", "pyarrow", "requests"),
                "format": f"llm.c: {HEADER_BYTES}-byte header of int32 [{MAGIC}, {VERSION}, ntokens, 0...], "
                          f"then uint16 tokens, {EOT} before every document"}
    _save_json(manifest_path, manifest)  # last: a folder with a manifest is complete
    if not args.keep_raw and os.path.isdir(raw_dir):
        shutil.rmtree(raw_dir)
    print(f"wrote {writer.written:,} tokens in {writer.index} shards to {out_dir}")
    if len(shards) < 2:
        _log("warning: no training shard: the corpus is smaller than --val_tokens; lower it")
    return manifest


# ----------------------------------------------------------------------------- benchmark
def bench(args):
    """Tokens/s of this script's pipeline (worker pool + shard writing) against bare tiktoken
    threads, on the same pydocs text with the same number of cores; the best of two runs each."""
    import resource
    import tempfile
    texts, workers = [d for d in map(module_doc, pydocs_items()[:args.bench_docs or None]) if d], args.workers
    print(f"bench text: {len(texts)} pydocs documents, {sum(map(len, texts)) / 1e6:.1f}M characters; "
          f"{workers} cores")
    ours, bare, rss = 0, 0, None
    for _ in range(2):  # the first pass also warms caches
        t = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp, make_pool(workers) as pool:
            writer = ShardWriter(tmp, "bench", args.val_tokens, args.shard_tokens)
            for arr in tokenized(pool, tasks({"kind": "text", "docs": texts}, None), workers):
                writer.add(arr)
            writer.flush()
        ours = max(ours, writer.written / (time.perf_counter() - t))
        if rss is None:  # now, before bare tiktoken's lists of tokens raise this process's peak
            scale = 1 if sys.platform == "darwin" else 1024  # ru_maxrss: bytes on macOS, KiB elsewhere
            rss = [resource.getrusage(who).ru_maxrss * scale / 2**20
                   for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
        t = time.perf_counter()
        n = sum(map(len, gpt2().encode_ordinary_batch(texts, num_threads=workers))) + len(texts)  # + EOTs
        bare = max(bare, n / (time.perf_counter() - t))
        assert n == writer.written, (n, writer.written)
    print(f"tokens: {n:,}\nours (pool of {workers} + shard writing): {ours / 1e6:.2f}M tokens/s\n"
          f"bare tiktoken encode_ordinary_batch(num_threads={workers}): {bare / 1e6:.2f}M tokens/s\n"
          f"ratio: {ours / bare:.2f}\npeak RSS while ours ran: main process {rss[0]:.0f} MiB "
          f"(holds the bench text), largest worker {rss[1]:.0f} MiB")


# ----------------------------------------------------------------------------- command line
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    p.add_argument("--dataset", help="fineweb | fineweb-edu | pydocs (offline)")
    p.add_argument("--sample", default="10BT", help="FineWeb sample: 10BT | 100BT | 350BT")
    p.add_argument("--input", nargs="+", metavar="PATH", help="your .txt/.jsonl/.parquet files or folders")
    p.add_argument("--name", help="shard name prefix (default: fineweb10B, fineweb-edu10B, pydocs, custom)")
    p.add_argument("--out_dir", help="output folder (default: data/<name>)")
    p.add_argument("--val_tokens", type=int, default=None, help="tokens in validation shard 0 "
                   "(default: 10M as in the paper; 200K for the 3.4M-token pydocs)")
    p.add_argument("--shard_tokens", type=int, default=100_000_000, help="tokens per training shard")
    p.add_argument("--max_tokens", type=int, default=DEFAULT_MAX_TOKENS, help="stop after this many tokens, "
                   "val included; 0 = all (default: the paper's 10M val + 5.11B train)")
    p.add_argument("--workers", type=int, default=cores, help="tokenizer processes (default: all cores)")
    p.add_argument("--keep_raw", action="store_true", help="keep downloaded parquet files in <out_dir>/raw")
    p.add_argument("--bench", action="store_true", help="measure tokens/s against bare tiktoken")
    p.add_argument("--bench_docs", type=int, default=0, help="pydocs documents for --bench (default 0: all)")
    args = p.parse_args(argv)
    if args.val_tokens is None:
        args.val_tokens = 200_000 if args.dataset == "pydocs" else 10_000_000
    if args.dataset == "pydocs" and args.max_tokens == DEFAULT_MAX_TOKENS:
        args.max_tokens = 0  # all of it: the budget is FineWeb's
    return args


def main(argv=None):
    args = parse_args(argv)
    try:
        if args.bench:
            bench(args)
        elif args.dataset or args.input:
            prepare(args)
        else:
            raise PrepError("nothing to do: give --dataset fineweb | fineweb-edu | pydocs, or --input FILES")
    except (PrepError, ShardError) as e:
        print(f"prepare_data.py: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("prepare_data.py: interrupted; run the same command again to resume", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":  # required: on macOS and Windows the workers import this file again
    sys.exit(main())
