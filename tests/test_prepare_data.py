"""prepare_data.py against a local imitation of the Hugging Face Hub (no internet), local inputs,
the offline pydocs corpus and the llm.c shard format. Real GPT-2 BPE, real HTTP, real processes."""
import hashlib
import http.server
import io
import json
import os
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from types import SimpleNamespace
from urllib.parse import parse_qs, urlsplit

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import tiktoken

import prepare_data as pdata

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENC = tiktoken.get_encoding("gpt2")
SMALL = ["--val_tokens", "2000", "--shard_tokens", "5000", "--workers", "2"]
WORDS = ("the of and layer-wise scaling width depth tokens attention, naïve café 東京 🙂 "
         "<|endoftext|> x=1; def f(a):\n return a ").split(" ")


def make_docs(seed, n):
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=rng.integers(5, 220))) + f" [{seed}.{i}]" for i in range(n)]


def parquet_bytes(docs, **extra):
    cols = {"text": docs, "id": [f"<urn:uuid:{i}>" for i in range(len(docs))],
            "dump": ["CC-MAIN-2024-10"] * len(docs), "url": [f"https://e.org/{i}" for i in range(len(docs))],
            "date": ["2024-02-21T00:00:00Z"] * len(docs), "language": ["en"] * len(docs),
            "language_score": [0.9] * len(docs), "token_count": [100] * len(docs), **extra}
    buf = io.BytesIO()
    pq.write_table(pa.table(cols), buf, row_group_size=7)  # several row groups per file
    return buf.getvalue()


def stream(docs):
    return np.array([t for d in docs for t in [pdata.EOT] + ENC.encode_ordinary(d)], np.uint16)


def read_all(out):
    val, train = pdata.find_shards(str(out))
    return np.concatenate([pdata.read_shard(p) for p in val + train])


def snapshot(out):
    return {f: (open(os.path.join(out, f), "rb").read(), os.stat(os.path.join(out, f)).st_mtime_ns)
            for f in sorted(os.listdir(out)) if f.endswith(".bin")}


def contents(out):
    return {n: b for n, (b, _) in snapshot(out).items()}


def error_line(argv, capsys):
    assert pdata.main(argv) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [l for l in err.splitlines() if l.startswith("prepare_data.py: error:")]
    assert len(lines) == 1, err
    return lines[0]


# ----------------------------------------------------------------------------- fake Hub
DOCS = [make_docs(s, 28) for s in range(3)]
FILES = {f"sample/10BT/000_0000{i}.parquet": parquet_bytes(d) for i, d in enumerate(DOCS)}
EXPECTED = stream([d for docs in DOCS for d in docs])
F0, F1, F2 = sorted(FILES)


class Hub:
    """Tree API with pagination, 302 from resolve to a 'CDN' URL, Range, and scripted faults:
    faults[url path] is a list of actions used by successive requests."""

    def __init__(self, files, page_size=2):
        self.files, self.page_size, self.faults, self.log = files, page_size, {}, []
        hub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *a):
                pass

            def do_GET(self):
                url = urlsplit(self.path)
                hub.log.append((url.path, dict(self.headers)))
                queue = hub.faults.get(url.path)
                fault = queue.pop(0) if queue else None
                if fault in ("429", "500"):
                    return self.reply(int(fault), b"busy")
                if fault == "html":
                    return self.reply(200, b"<!DOCTYPE html><html>Sign in</html>", "text/html")
                m = re.fullmatch(r"/api/datasets/[^/]+/[^/]+/tree/main/(.+)", url.path)
                if m:
                    return self.listing(m.group(1), int(parse_qs(url.query).get("cursor", ["0"])[0]))
                m = re.fullmatch(r"/datasets/[^/]+/[^/]+/resolve/main/(.+)", url.path)
                if m and m.group(1) in hub.files:
                    self.send_response(302)
                    self.send_header("Location", f"{hub.url}/cdn/{m.group(1)}?X-Amz-Signature=abc")
                    self.send_header("Content-Length", "0")
                    return self.end_headers()
                if url.path.startswith("/cdn/") and url.path[5:] in hub.files:
                    return self.serve(hub.files[url.path[5:]], fault)
                self.reply(404, b"not found")

            def reply(self, code, body, ctype="text/plain"):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def listing(self, folder, cursor):
                entries = [{"type": "directory", "path": folder, "oid": "0", "size": 0}]
                entries += [{"type": "file", "path": p, "oid": "1", "size": len(b),
                             "lfs": {"oid": hashlib.sha256(b).hexdigest(), "size": len(b), "pointerSize": 134}}
                            for p, b in sorted(hub.files.items()) if p.startswith(folder)]
                page = entries[cursor:cursor + hub.page_size]
                self.send_response(200)
                if cursor + hub.page_size < len(entries):
                    nxt = f"{hub.url}{urlsplit(self.path).path}?recursive=true&cursor={cursor + hub.page_size}"
                    self.send_header("Link", f'<{nxt}>; rel="next"')
                body = json.dumps(page).encode()
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def serve(self, data, fault):
                if fault == "corrupt":
                    mid = len(data) // 2
                    data = data[:mid] + bytes([data[mid] ^ 0xFF]) + data[mid + 1:]
                m = re.fullmatch(r"bytes=(\d+)-", self.headers.get("Range", ""))
                start = int(m.group(1)) if m else 0
                self.send_response(206 if m else 200)
                if m:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(data) - start))
                self.end_headers()
                if fault and fault.startswith("drop:"):  # promise it all, send part, hang up
                    self.wfile.write(data[start:start + int(fault[5:])])
                    self.wfile.flush()
                    self.close_connection = True
                    return
                self.wfile.write(data[start:])

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self, prefix):
        return [p for p, _ in self.log if p.startswith(prefix)]


@pytest.fixture
def hub(monkeypatch):
    h = Hub(FILES)
    monkeypatch.setenv("HF_ENDPOINT", h.url)
    monkeypatch.setenv("HF_TOKEN", "hf_test")
    monkeypatch.setattr(pdata, "BACKOFF_S", 0.01)  # retry waits, not behaviour
    monkeypatch.setattr(pdata, "CHUNK_BYTES", 1024)  # files here are tiny; a drop loses < 1 chunk
    yield h
    h.server.shutdown()
    h.server.server_close()


def fineweb(out, *extra):
    return ["--dataset", "fineweb", "--out_dir", str(out), *SMALL, *extra]


# ----------------------------------------------------------------------------- shard format
def test_shard_roundtrip_has_llmc_layout(tmp_path):
    path = str(tmp_path / "x_val_000000.bin")
    tokens = list(range(0, 65536, 7)) + [pdata.EOT]
    pdata.write_shard(path, tokens)
    raw = open(path, "rb").read()
    assert struct.unpack("<256i", raw[:1024]) == (20240520, 1, len(tokens)) + (0,) * 253
    assert raw[1024:] == np.array(tokens, "<u2").tobytes()
    got = pdata.read_shard(path)
    assert isinstance(got, np.memmap) and got.dtype == np.uint16 and got.tolist() == tokens
    assert pdata.read_header(path) == len(tokens) and os.listdir(tmp_path) == ["x_val_000000.bin"]
    with pytest.raises(ValueError, match="uint16"):
        pdata.write_shard(path, [70000])


@pytest.mark.parametrize("damage, reason", [
    (lambda b: struct.pack("<i", 1234) + b[4:], "bad magic 1234"),
    (lambda b: b[:4] + struct.pack("<i", 7) + b[8:], "unsupported shard version 7"),
    (lambda b: b[:-2], "truncated or corrupt"),
    (lambda b: b[:100], "truncated: 100 bytes"),
])
def test_reader_rejects_bad_shards(tmp_path, damage, reason):
    path = str(tmp_path / "d_train_000001.bin")
    pdata.write_shard(path, np.arange(50, dtype=np.uint16))
    data = open(path, "rb").read()
    open(path, "wb").write(damage(data))
    for read in (pdata.read_header, pdata.read_shard):
        with pytest.raises(pdata.ShardError) as e:
            read(path)
        assert str(e.value).startswith(path) and reason in str(e.value) and "\n" not in str(e.value)


def test_find_shards(tmp_path):
    with pytest.raises(pdata.ShardError, match=r"no data in .*missing.*prepare_data.py --dataset pydocs"):
        pdata.find_shards(str(tmp_path / "nope"))
    pdata.write_shard(str(tmp_path / "a_val_000000.bin"), [1])
    with pytest.raises(pdata.ShardError, match="1 val and 0 train"):
        pdata.find_shards(str(tmp_path))
    for i in (2, 1):
        pdata.write_shard(str(tmp_path / f"a_train_00000{i}.bin"), [i])
    open(tmp_path / "a_train_000003.bin.tmp", "wb").close()
    val, train = pdata.find_shards(str(tmp_path))
    assert [os.path.basename(p) for p in val + train] == \
        ["a_val_000000.bin", "a_train_000001.bin", "a_train_000002.bin"]


def test_import_is_cheap():
    code = ("import sys, prepare_data; "
            "print(sorted(m for m in ('tiktoken', 'pyarrow', 'requests', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# ----------------------------------------------------------------------------- Hub downloads
def test_hub_download_decodes_to_the_documents(hub, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # default output folder: data/fineweb10B
    assert pdata.main(["--dataset", "fineweb", *SMALL]) == 0
    out = tmp_path / "data" / "fineweb10B"
    tokens = read_all(out)
    assert np.array_equal(tokens, EXPECTED)
    docs = [ENC.decode(d[1:].tolist()) for d in np.split(tokens, np.flatnonzero(tokens == pdata.EOT))[1:]]
    assert docs == [d for ds in DOCS for d in ds]  # in order, each after its own EOT
    names = sorted(f for f in os.listdir(out) if f.endswith(".bin"))
    n_train = -(-(len(EXPECTED) - 2000) // 5000)
    assert names == [f"fineweb10B_train_{i:06d}.bin" for i in range(1, n_train + 1)] + \
        ["fineweb10B_val_000000.bin"]
    assert [pdata.read_header(out / n) for n in names[:-1]][:-1] == [5000] * (n_train - 1)
    assert open(out / names[-1], "rb").read(12) == struct.pack("<3i", 20240520, 1, 2000)
    man = json.load(open(out / "manifest.json"))
    assert [s["name"] for s in man["sources"]] == sorted(FILES)
    assert [s["sha256"] for s in man["sources"]] == \
        [hashlib.sha256(FILES[f]).hexdigest() for f in sorted(FILES)]
    assert man["total_tokens"] == len(EXPECTED) and man["val_tokens"] == 2000
    assert man["fingerprint"]["tokenizer"].startswith("gpt2")
    assert set(man["versions"]) >= {"python", "tiktoken", "pyarrow", "numpy"}
    assert sorted(os.listdir(out)) == sorted(names + ["manifest.json", "progress.json"])  # raw parquet deleted
    assert len(hub.paths("/api/")) == 2  # 4 entries, 2 per page: followed the Link header
    assert all(h.get("Authorization") == "Bearer hf_test" for p, h in hub.log if p.startswith("/api/"))
    assert len(hub.paths("/cdn/")) == 3  # each file once, through the redirect


def test_dropped_download_resumes_with_range(hub, tmp_path):
    hub.faults[f"/cdn/{F1}"] = ["drop:3000"]
    assert pdata.main(fineweb(tmp_path)) == 0
    assert np.array_equal(read_all(tmp_path), EXPECTED)
    first, again = [h.get("Range") for p, h in hub.log if p == f"/cdn/{F1}"]
    assert first is None and 2000 <= int(re.fullmatch(r"bytes=(\d+)-", again).group(1)) <= 3000
    assert len(hub.paths(f"/datasets/HuggingFaceFW/fineweb/resolve/main/{F1}")) == 2  # fresh signed URL


def test_429_and_500_are_retried(hub, tmp_path):
    hub.faults["/api/datasets/HuggingFaceFW/fineweb/tree/main/sample/10BT"] = ["429", "500"]
    hub.faults[f"/datasets/HuggingFaceFW/fineweb/resolve/main/{F0}"] = ["500"]
    hub.faults[f"/cdn/{F2}"] = ["429", "500"]
    assert pdata.main(fineweb(tmp_path)) == 0
    assert np.array_equal(read_all(tmp_path), EXPECTED)


def test_corrupt_download_is_caught_by_sha256(hub, tmp_path, capsys):
    hub.faults[f"/cdn/{F0}"] = ["corrupt"]  # once: deleted and downloaded again
    assert pdata.main(fineweb(tmp_path / "a")) == 0
    assert np.array_equal(read_all(tmp_path / "a"), EXPECTED) and len(hub.paths(f"/cdn/{F0}")) == 2
    hub.faults[f"/cdn/{F0}"] = ["corrupt", "corrupt"]
    line = error_line(fineweb(tmp_path / "b"), capsys)
    assert "sha256 mismatch twice" in line and F0 in line
    assert not os.path.exists(tmp_path / "b" / "raw" / os.path.basename(F0))


def test_html_page_instead_of_parquet(hub, tmp_path, capsys):
    hub.faults[f"/cdn/{F0}"] = ["html"]
    line = error_line(fineweb(tmp_path), capsys)
    assert "HTML page instead of parquet" in line and F0 in line and "HF_TOKEN" in line


def test_max_tokens_downloads_only_needed_files(hub, tmp_path):
    assert pdata.main(fineweb(tmp_path, "--max_tokens", "3000")) == 0
    assert np.array_equal(read_all(tmp_path), EXPECTED[:3000])
    assert hub.paths("/cdn/") == [f"/cdn/{F0}"]
    assert json.load(open(tmp_path / "manifest.json"))["total_tokens"] == 3000


def test_not_enough_disk_space(hub, tmp_path, capsys, monkeypatch):
    # The one stand-in in this file: a full disk cannot be made for real in a test.
    full = SimpleNamespace(total=10**12, used=10**12, free=100)
    monkeypatch.setattr(pdata.shutil, "disk_usage", lambda p: full)
    assert "not enough disk space" in error_line(fineweb(tmp_path), capsys)


def test_rerun_changes_nothing(hub, tmp_path, capsys):
    assert pdata.main(fineweb(tmp_path)) == 0
    before, hub.log[:] = snapshot(tmp_path), []
    assert pdata.main(fineweb(tmp_path)) == 0
    assert snapshot(tmp_path) == before and hub.log == []  # not even the listing
    assert "nothing to do" in capsys.readouterr().out


def test_resume_after_kill_between_shards(hub, tmp_path):
    assert pdata.main(fineweb(tmp_path, "--keep_raw")) == 0
    clean = contents(tmp_path)
    # A run killed after shard 1: later shards and the manifest missing, a half-written .tmp,
    # the downloads partly gone.
    names = sorted(clean)
    for n in names[1:-1]:
        os.remove(tmp_path / n)
    os.remove(tmp_path / "manifest.json")
    os.remove(tmp_path / "raw" / os.path.basename(F2))
    open(tmp_path / "raw" / (os.path.basename(F2) + ".part"), "wb").write(FILES[F2][:500])
    open(tmp_path / "fineweb10B_train_000002.bin.tmp", "wb").write(b"\0" * 99)
    hub.log[:] = []
    assert pdata.main(fineweb(tmp_path)) == 0
    assert contents(tmp_path) == clean
    assert not any(f.endswith(".tmp") for f in os.listdir(tmp_path)) and not os.path.exists(tmp_path / "raw")
    assert [h.get("Range") for p, h in hub.log if p.startswith("/cdn/")] == ["bytes=500-"]  # F2's rest only


def test_resume_after_kill_without_raw_files(hub, tmp_path):
    # Downloads deleted as usual; shard 1 holds all of F0, so a resume must not fetch F0 again.
    assert len(stream(DOCS[0])) <= 2000 + 5000 < len(stream(DOCS[0] + DOCS[1]))
    assert pdata.main(fineweb(tmp_path)) == 0
    clean = contents(tmp_path)
    for n in sorted(clean)[1:-1]:
        os.remove(tmp_path / n)
    os.remove(tmp_path / "manifest.json")
    hub.log[:] = []
    assert pdata.main(fineweb(tmp_path)) == 0
    assert contents(tmp_path) == clean
    assert f"/cdn/{F0}" not in hub.paths("/cdn/")


# ----------------------------------------------------------------------------- local inputs
def test_local_txt_jsonl_parquet(tmp_path):
    docs = make_docs(7, 9)
    (tmp_path / "txts").mkdir()
    for i, name in ((1, "b.txt"), (0, "a.txt")):
        (tmp_path / "txts" / name).write_text(docs[i], encoding="utf-8")
    docs[3] = ""  # an empty document still gets its EOT: the stream is exact
    (tmp_path / "c.jsonl").write_text("\n".join(json.dumps({"text": d, "id": 1}) for d in docs[2:5]) + "\n\n")
    (tmp_path / "d.parquet").write_bytes(parquet_bytes(docs[5:]))
    out = tmp_path / "out"
    argv = ["--input", str(tmp_path / "txts"), str(tmp_path / "c.jsonl"), str(tmp_path / "d.parquet"),
            "--name", "mine", "--out_dir", str(out), *SMALL]
    assert pdata.main(argv) == 0
    assert np.array_equal(read_all(out), stream(docs))
    assert os.path.exists(out / "mine_val_000000.bin")
    man = json.load(open(out / "manifest.json"))
    assert [os.path.basename(s["name"]) for s in man["sources"]] == ["a.txt", "b.txt", "c.jsonl", "d.parquet"]
    assert man["sources"][2]["sha256"] == hashlib.sha256((tmp_path / "c.jsonl").read_bytes()).hexdigest()


def test_budget_change_and_damaged_shard_are_rebuilt(tmp_path):
    docs = make_docs(3, 120)
    (tmp_path / "in").mkdir()
    for i, d in enumerate(docs):
        (tmp_path / "in" / f"{i:03d}.txt").write_text(d)
    def build(out, budget):
        argv = ["--input", str(tmp_path / "in"), "--out_dir", str(out), "--max_tokens", budget, *SMALL]
        assert pdata.main(argv) == 0
        return contents(out)
    small, full = build(tmp_path / "small", "9000"), build(tmp_path / "full", "0")
    assert len(small) == 3 and len(full) > 4 and np.array_equal(read_all(tmp_path / "full"), stream(docs))
    out = tmp_path / "out"
    assert build(out, "9000") == small
    assert build(out, "0") == full  # grown: the short last shard is rewritten, more follow
    assert build(out, "9000") == small  # shrunk: shards past the budget removed
    name = sorted(small)[1]
    open(out / name, "r+b").truncate(3000)  # damaged after completion
    assert build(out, "9000") == small


@pytest.mark.parametrize("name, content, message", [
    ("bad.txt", b"caf\xe9 au lait", r"bad\.txt: not valid UTF-8 \(byte 3\)"),
    ("cols.parquet", None, r"cols\.parquet: no 'text' column \(found: content, id\)"),
    ("keys.jsonl", b'{"text": "ok"}\n{"body": "x", "id": 2}\n',
     r"keys\.jsonl:2: no string 'text' field \(found: body, id\)"),
    ("data.csv", b"text\nhello\n", r"data\.csv: unsupported input type"),
])
def test_local_input_errors(tmp_path, capsys, name, content, message):
    if content is None:
        buf = io.BytesIO()
        pq.write_table(pa.table({"content": ["a", "b"], "id": [1, 2]}), buf)
        content = buf.getvalue()
    (tmp_path / name).write_bytes(content)
    line = error_line(["--input", str(tmp_path / name), "--out_dir", str(tmp_path / "out"), *SMALL], capsys)
    assert re.search(message, line), line


def test_out_dir_from_another_source_or_tokenizer(tmp_path, capsys):
    (tmp_path / "a.txt").write_text(" ".join(make_docs(1, 80)))
    out = str(tmp_path / "out")
    assert pdata.main(["--input", str(tmp_path / "a.txt"), "--out_dir", out, *SMALL]) == 0
    line = error_line(["--dataset", "pydocs", "--out_dir", out, *SMALL], capsys)
    assert "holds shards from a different source or tokenizer" in line
    assert "source:" in line and "--out_dir" in line
    for f in ("manifest.json", "progress.json"):
        man = json.load(open(os.path.join(out, f)))
        man["fingerprint"]["tokenizer"] = "cl100k_base"
        json.dump(man, open(os.path.join(out, f), "w"))
    line = error_line(["--input", str(tmp_path / "a.txt"), "--out_dir", out, *SMALL], capsys)
    assert "tokenizer: cl100k_base there" in line


def test_unknown_dataset_or_sample(tmp_path, capsys):
    line = error_line(["--dataset", "c4", "--out_dir", str(tmp_path)], capsys)
    assert "unknown --dataset 'c4'" in line and "fineweb, fineweb-edu, pydocs" in line
    line = error_line(["--dataset", "fineweb-edu", "--sample", "7BT", "--out_dir", str(tmp_path)], capsys)
    assert "unknown --sample '7BT'" in line and "10BT, 100BT, 350BT" in line


# ----------------------------------------------------------------------------- pydocs, CLI, bench
PYDOCS = ["--dataset", "pydocs", "--max_tokens", "240000", "--val_tokens", "20000",
          "--shard_tokens", "20000", "--workers", "2"]


@pytest.fixture(scope="module")
def pydocs_ref(tmp_path_factory):
    out = tmp_path_factory.mktemp("pydocs_ref")
    assert pdata.main([*PYDOCS, "--out_dir", str(out)]) == 0
    return out


def test_pydocs_offline_and_deterministic(pydocs_ref, tmp_path):
    assert pdata.main([*PYDOCS, "--out_dir", str(tmp_path)]) == 0
    assert contents(tmp_path) == contents(pydocs_ref)
    tokens = read_all(tmp_path)
    assert len(tokens) == 240000 and tokens[0] == pdata.EOT
    text = ENC.decode(tokens[:20000].tolist())
    assert "Module " in text and "def " in text
    man = json.load(open(tmp_path / "manifest.json"))
    assert man["fingerprint"]["source"]["torch"] and man["fingerprint"]["source"]["python"]


def test_cli_subprocess_killed_then_resumed(pydocs_ref, tmp_path):
    cmd = [sys.executable, "prepare_data.py", *PYDOCS, "--out_dir", str(tmp_path)]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)  # its own group: the kill takes the workers too
    deadline = time.time() + 30
    fourth = tmp_path / "pydocs_train_000004.bin"
    while time.time() < deadline and proc.poll() is None and not fourth.exists():
        time.sleep(0.01)
    assert proc.poll() is None, "finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not os.path.exists(tmp_path / "manifest.json") and os.path.exists(tmp_path / "progress.json")
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert contents(tmp_path) == contents(pydocs_ref)


def test_cli_subprocess_error_is_one_line(tmp_path):
    done = subprocess.run([sys.executable, "prepare_data.py", "--dataset", "fineweb", "--sample", "1BT",
                           "--out_dir", str(tmp_path)], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 1 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("prepare_data.py: error: unknown --sample '1BT'")


def test_cli_subprocess_hub_download(hub, tmp_path):
    env = dict(os.environ, HF_ENDPOINT=hub.url)
    done = subprocess.run([sys.executable, "prepare_data.py", "--dataset", "fineweb-edu", "--out_dir",
                           str(tmp_path), *SMALL], cwd=ROOT, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert np.array_equal(read_all(tmp_path), EXPECTED)
    assert hub.paths("/api/datasets/HuggingFaceFW/fineweb-edu/tree/main/sample/10BT")


def test_bench_reports_ratio_and_memory(capsys):
    assert pdata.main(["--bench", "--bench_docs", "30", "--workers", "2"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"ratio: \d+\.\d\d", out) and "tokens/s" in out and "MiB" in out
