import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)  # the project is flat files, not a package

# Offline GPT-2 BPE when the workspace ships tiktoken's cache beside the repo.
_cache = os.path.join(os.path.dirname(ROOT), "shared", "tiktoken")
if "TIKTOKEN_CACHE_DIR" not in os.environ and os.path.isdir(_cache):
    os.environ["TIKTOKEN_CACHE_DIR"] = _cache
