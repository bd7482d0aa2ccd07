"""Small shared helpers: paths, atomic writes, hashing, devices, seeding."""

from __future__ import annotations

import errno
import hashlib
import logging
import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

if TYPE_CHECKING:  # torch is imported where it is used: entries and files need no torch
    import torch

from .errors import XRBenchError


log = logging.getLogger(__name__)


def cache_dir() -> Path:
    """Root of xrbench's cache (checkpoints, stage results): ``$XRBENCH_CACHE`` or
    ``$XDG_CACHE_HOME/xrbench`` or ``~/.cache/xrbench``."""
    env = os.environ.get("XRBENCH_CACHE")
    if env:
        path = Path(env).expanduser()
        if path.exists() and not path.is_dir():
            raise XRBenchError(f"XRBENCH_CACHE={env} is a file; point it at a folder (it is "
                               "created if missing)")
        return path
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "xrbench"


def duration_text(seconds: float) -> str:
    """A rough duration for a message: ``45 s``, ``12 min``, ``1.6 h``."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def data_dir(override: str | os.PathLike[str] | None = None) -> Path:
    """Where datasets live: ``override`` (``--data-dir``), else ``$XRBENCH_DATA``, else
    ``<cache_dir>/data``."""
    if override:
        return Path(override).expanduser()
    env = os.environ.get("XRBENCH_DATA")
    return Path(env).expanduser() if env else cache_dir() / "data"


@contextmanager
def file_lock(path: str | os.PathLike[str]) -> Iterator[None]:
    """Hold an exclusive advisory lock on the file ``path`` (created if needed) for the block.

    Two processes that need the same cached result (two ``evaluate`` runs of one key) take
    turns: the second waits, then finds the first one's result instead of computing it again.
    The kernel releases the lock when its process dies, even by SIGKILL, so a killed run never
    leaves a stale lock. No-op where ``fcntl`` does not exist (Windows).
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield
        return
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fh = open(path, "a+b")
    except OSError as exc:  # a read-only cache still serves what it holds: no lock then
        if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
            raise
        log.info("no lock on %s (%s): going on without one", path, exc.strerror)
        yield
        return
    with fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def lock_file(what: str, cache_root: Path | None = None) -> Path:
    """``<cache>/locks/<what>.lock``: all of xrbench's locks live in one folder of its cache,
    never beside a user's files."""
    return (cache_root or cache_dir()) / "locks" / f"{what}.lock"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes, *,
                       exclusive: bool = False) -> bool:
    """Write ``data`` to ``path`` via a temporary file in the same folder and a rename, so a
    reader never sees a half-written file. The file gets the usual permissions (0666 less
    the umask), not mkstemp's private 0600.

    ``exclusive``: create ``path`` only if it does not exist, atomically against other
    processes (a hard link of the finished temporary file, which fails if the name is taken;
    ``O_EXCL`` where the filesystem has no hard links). Returns False, writing nothing, when
    ``path`` exists already; True when written."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if not exclusive:
            os.replace(tmp, path)
            return True
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # no hard links here (some network filesystems): O_EXCL instead
            try:
                out = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666 & ~_umask())
            except FileExistsError:
                return False
            with os.fdopen(out, "wb") as fh:
                fh.write(data)
        return True
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def canonical_json(obj: Any) -> str:
    """Deterministic JSON (sorted keys, no spaces) for hashing."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), default=str)


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


#: the largest JSON file xrbench reads (entries are tens of KB; manifests and indexes of
#: large image folders a few MB)
MAX_JSON_BYTES = 256 * 2 ** 20


def read_json(path: str | os.PathLike[str]) -> Any:
    """Read a JSON file; a missing, unreadable, non-UTF-8 or malformed file is an
    :class:`XRBenchError` naming it."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as exc:
        raise XRBenchError(f"file not found: {path}") from exc
    except IsADirectoryError as exc:
        raise XRBenchError(f"{path} is a folder, not a JSON file") from exc
    except UnicodeDecodeError as exc:
        raise XRBenchError(f"{path} is not UTF-8 text (byte {exc.start}); is it really a "
                           "JSON file?") from exc
    except OSError as exc:
        raise XRBenchError(f"cannot read {path}: {exc.strerror or exc}") from exc
    if len(text) > MAX_JSON_BYTES:
        raise XRBenchError(f"{path} holds {len(text)} characters, more than any xrbench JSON "
                           f"file ({MAX_JSON_BYTES}); is it really one?")
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise XRBenchError(
            f"malformed JSON in {path} (line {exc.lineno}, column {exc.colno}): {exc.msg}"
        ) from exc
    except RecursionError:
        raise XRBenchError(f"{path} nests its JSON too deeply to be an xrbench file") from None


def read_json_object(path: str | os.PathLike[str], what: str = "JSON file") -> dict[str, Any]:
    """:func:`read_json` for files that must hold one JSON object (an entry, a sidecar...)."""
    obj = read_json(path)
    if not isinstance(obj, dict):
        raise XRBenchError(f"{what} {path} holds a JSON {type(obj).__name__}, not an object")
    return obj


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_file(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def hash_config(obj: Any, n: int = 12) -> str:
    """Short sha256 of the canonical JSON of ``obj``."""
    return sha256_bytes(canonical_json(obj).encode())[:n]


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``; ``cuda`` / ``cuda:N``."""
    import torch

    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise XRBenchError("--device cuda was asked for but no CUDA device is available; "
                           "use --device cpu or --device auto")
    if name != "cpu" and not name.startswith("cuda"):
        raise XRBenchError(f"unknown device {name!r}; use auto, cpu or cuda")
    return torch.device(name)


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    """A fresh ``torch.Generator`` seeded with ``seed`` on ``device``."""
    import torch

    g = torch.Generator(device=device)
    g.manual_seed(int(seed))
    return g


def model_device(model: torch.nn.Module, fallback: torch.device | str = "cpu") -> torch.device:
    """The device of the model's first parameter (``fallback`` for a parameterless model)."""
    import torch

    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device(fallback)
