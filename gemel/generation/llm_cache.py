"""A cache of converted GGUF models, so that only the first load on a machine de-quantizes.

transformers turns a GGUF file into a torch model by parsing it and de-quantizing every tensor,
on every load (about 15 s for SmolLM2-135M, 45 s for Gemma3-270M on a 2-core CPU). The first load
saves the result (safetensors in float32, config, generation config, tokenizer) as an entry of the
user cache; later loads read the entry with `from_pretrained(entry)`, in about a second.

Where: $GEMEL_CACHE, else $XDG_CACHE_HOME/gemel, else ~/.cache/gemel; entries are in its `llm/`.
GEMEL_LLM_CACHE=0 turns the cache off (every load converts the GGUF again, as before).

An entry's name holds everything that decides its content: the GGUF file's stem and content hash,
the transformers and gguf versions (they do the conversion) and CONVERSION, raised whenever the
way gemel converts changes. A new version therefore builds a new entry and never reads a stale
one; old entries stay until the user deletes them (it is a cache: deleting the folder is safe).

Concurrent runs: an entry is built in a temporary folder beside it and published by renaming the
folder, which is atomic, so a reader sees a whole entry or none. When two processes build at once,
the second rename fails and that process uses the entry already there. An entry that fails its
check (manifest, every file at its recorded size) or fails to load is moved aside and rebuilt.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
import sys
import time
from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import torch

from gemel.atomic import write_text_atomic
from gemel.hashing import file_sha256

# Raise when the way an entry is made changes (what is saved, the dtype, a fix to the conversion),
# so that entries made the old way are no longer used.
CONVERSION = 1
MANIFEST = "gemel-entry.json"  # written last into the temporary folder: its presence and file list mark a whole entry
_STALE_S = 24 * 3600  # a temporary folder this old belongs to a build that was killed


def enabled() -> bool:
    return os.environ.get("GEMEL_LLM_CACHE", "1").strip().lower() not in {"0", "false", "no", "off"}


def cache_root() -> Path:
    if os.environ.get("GEMEL_CACHE"):
        return Path(os.environ["GEMEL_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "gemel"


def llm_dir() -> Path:
    return cache_root() / "llm"


def _stat_key(path: Path) -> tuple[int, int]:
    st = path.stat()
    return st.st_size, st.st_mtime_ns


def gguf_sha256(path: str | Path) -> str:
    """The file's sha256, remembered in a small sidecar under the cache keyed by (path, size, mtime):
    hashing a 250 MB GGUF costs about 0.3 s, paid again only when the file changes."""
    path = Path(path).resolve()
    size, mtime_ns = _stat_key(path)
    sidecar = llm_dir() / ".sha256" / f"{path.name}.{hashlib.sha1(str(path).encode()).hexdigest()[:16]}.json"
    with contextlib.suppress(OSError, ValueError, KeyError):
        known = json.loads(sidecar.read_text())
        if (known["path"], known["size"], known["mtime_ns"]) == (str(path), size, mtime_ns):
            return str(known["sha256"])
    digest = file_sha256(path)
    with contextlib.suppress(OSError):  # a read-only cache only costs the hash next time
        record = {"path": str(path), "size": size, "mtime_ns": mtime_ns, "sha256": digest}
        write_text_atomic(json.dumps(record), sidecar)
    return digest


def _identity(gguf: Path, sha256: str) -> dict[str, Any]:
    """What an entry is made from and with; its name and manifest both come from it."""
    return {"gguf_file": gguf.name, "sha256": sha256, "transformers": version("transformers"),
            "gguf": version("gguf"), "conversion": CONVERSION}


def entry_name(identity: dict[str, Any]) -> str:
    return (f"{Path(identity['gguf_file']).stem}-{identity['sha256'][:16]}-transformers{identity['transformers']}"
            f"-gguf{identity['gguf']}-c{identity['conversion']}")


def check_entry(entry: Path, identity: dict[str, Any]) -> str | None:
    """None for a whole entry made from `identity`, else what is wrong with it. Cheap (stat calls):
    it catches a missing or truncated file; a file corrupted in place fails at load instead."""
    try:
        manifest = json.loads((entry / MANIFEST).read_text())
    except FileNotFoundError:
        return f"no {MANIFEST}"
    except (OSError, ValueError) as e:
        return f"unreadable {MANIFEST} ({e})"
    if not isinstance(manifest, dict) or manifest.get("identity") != identity:
        return f"{MANIFEST} describes another conversion"
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return f"{MANIFEST} lists no files"
    for name, size in files.items():
        try:
            actual = (entry / name).stat().st_size
        except OSError:
            return f"{name} is missing"
        if actual != size:
            return f"{name} has {actual} bytes, {size} expected"
    return None


# Parsed GGUF readers of this process, by (path, mode, size, mtime_ns): see one_gguf_parse.
_readers: dict[tuple[str, str, int, int], Any] = {}


@contextlib.contextmanager
def one_gguf_parse() -> Iterator[None]:
    """While active, `gguf.GGUFReader(path)` of a file this process already parsed (and that has not
    changed since) returns that same reader.

    transformers builds a new reader (a 2-3 s parse of the whole metadata) for the config, again
    for the weights and again for the tokenizer's config. A reader is a read-only view of a
    memory-mapped file, so sharing one is safe. The memo outlives the block so that a later load
    of the same file (the model after the tokenizer, with the cache off) does not parse it again;
    `forget_parses` drops it once the cache entry makes it useless."""
    import gguf

    original = gguf.GGUFReader

    def shared(path: str | os.PathLike[str], mode: str = "r") -> Any:
        key = (str(Path(path).resolve()), mode, *_stat_key(Path(path)))
        if key not in _readers:
            _readers[key] = original(path, mode)
        return _readers[key]

    gguf.GGUFReader = shared  # transformers imports it from the package at each call
    try:
        yield
    finally:
        gguf.GGUFReader = original


def forget_parses(gguf: Path) -> None:
    for key in [k for k in _readers if k[0] == str(gguf.resolve())]:
        del _readers[key]


def convert(gguf: Path, out: Path) -> None:
    """GGUF -> a Hugging Face folder: the float32 model (the dtype the conversion produces, so any
    dtype a caller asks for is cast from the same values as a direct load casts them) and the tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with one_gguf_parse():
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    forget_parses(gguf)  # from now on the entry is read, not the GGUF
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        # The model stays tagged as a GGUF one, which save_pretrained refuses. Its weights are
        # plain de-quantized tensors unless transformers kept some packed (GGUF kernels installed):
        # those cannot be saved as a normal checkpoint, so say how to go on without the cache.
        if getattr(quantizer, "packed_modules", None):
            raise RuntimeError(f"{gguf.name}: transformers kept the weights in GGUF blocks, which the LLM "
                               f"cache cannot store; set GEMEL_LLM_CACHE=0 to load the GGUF directly")
        quantizer.remove_quantization_config(model)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)


def _note(message: str) -> None:
    print(f"llm cache: {message}", file=sys.stderr)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _discard(folder: Path) -> None:
    """Move a folder out of the way atomically (a concurrent reader keeps its open files), then delete it."""
    trash = folder.with_name(f".trash-{folder.name}-{secrets.token_hex(4)}")
    try:
        os.rename(folder, trash)
    except FileNotFoundError:  # another process discarded it first
        return
    shutil.rmtree(trash, ignore_errors=True)


def _sweep_stale(root: Path) -> None:
    """Temporary folders of builds that were killed, once they are old enough to be surely dead,
    and discarded entries whose deletion was interrupted (nobody reads those)."""
    now = time.time()
    for tmp in root.glob(".tmp-*"):
        with contextlib.suppress(OSError):
            if now - tmp.stat().st_mtime > _STALE_S:
                shutil.rmtree(tmp, ignore_errors=True)
    for trash in root.glob(".trash-*"):
        shutil.rmtree(trash, ignore_errors=True)


def _build(gguf: Path, identity: dict[str, Any], entry: Path) -> None:
    """Convert into a temporary folder beside `entry`, then publish it with one rename."""
    root = entry.parent
    root.mkdir(parents=True, exist_ok=True)
    _sweep_stale(root)
    tmp = root / f".tmp-{entry.name}-{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        t0 = time.perf_counter()
        _note(f"converting {gguf.name} once for this machine, into {entry}")
        convert(gguf, tmp)
        files = {p.name: p.stat().st_size for p in sorted(tmp.iterdir()) if p.is_file()}
        (tmp / MANIFEST).write_text(json.dumps({"identity": identity, "files": files}, indent=1, sort_keys=True))
        for p in tmp.iterdir():  # the entry's bytes on disk before its name is
            _fsync(p)
        _fsync(tmp)
        try:
            os.rename(tmp, entry)
        except OSError:
            # Another process published first (rename onto a non-empty folder fails): use theirs
            # when it is whole, else replace it with ours.
            if check_entry(entry, identity) is None:
                _note(f"{entry.name} was published by another process meanwhile; using it")
                return
            _discard(entry)
            os.rename(tmp, entry)
        _fsync(root)
        _note(f"{entry.name} built in {time.perf_counter() - t0:.1f} s")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ensure_entry(gguf: str | Path) -> Path:
    """The cache entry of this GGUF file, built first when it is absent or damaged."""
    gguf = Path(gguf).resolve()
    identity = _identity(gguf, gguf_sha256(gguf))
    entry = llm_dir() / entry_name(identity)
    problem = check_entry(entry, identity)
    if problem is None:
        return entry
    if entry.exists():
        _note(f"rebuilding {entry} ({problem})")
        _discard(entry)
    _build(gguf, identity, entry)
    return entry


def load(cls: Any, gguf: str | Path, **kw: Any) -> Any:
    """`cls.from_pretrained` of this GGUF's cache entry (built on first use). An entry that fails to
    load (a file corrupted in place) is rebuilt once; a second failure is a real error and raised.
    A cache that cannot be written (read-only home, full disk) only costs the speed: the GGUF is
    then loaded directly."""
    gguf = Path(gguf)
    try:
        entry = ensure_entry(gguf)
    except OSError as e:
        _note(f"cannot use the cache in {llm_dir()} ({type(e).__name__}: {e}); loading {gguf.name} directly")
        with one_gguf_parse():
            return cls.from_pretrained(gguf.parent, gguf_file=gguf.name, **kw)
    try:
        return cls.from_pretrained(entry, local_files_only=True, **kw)
    except Exception as e:  # noqa: BLE001 - any failure to read a cache entry means: rebuild it
        _note(f"{entry} failed to load ({type(e).__name__}: {e}); rebuilding it")
        _discard(entry)
    return cls.from_pretrained(ensure_entry(gguf), local_files_only=True, **kw)
