"""Writing results without leaving half-written files.

:func:`atomic_path` is the project's one atomic-write helper (temporary file beside the target +
rename); :func:`save_png` and :func:`save_json` use it, and :class:`OutputDir` builds a whole result
directory in a hidden temporary directory beside the target and renames it into place only when
everything succeeded, so a failure leaves no output directory behind. :func:`check_writable_dir`
refuses an unusable ``--out`` before any work; :func:`sigint_deferred` holds Ctrl-C back while
results are being written.
"""


from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import signal
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator, Optional, Sequence

import numpy as np

from brgm_pyro.errors import BRGMError
from brgm_pyro.image_files import to_uint8

# --- atomic writing --------------------------------------------------------------------------------

def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _normal_mode(path: str | os.PathLike, directory: bool = False) -> None:
    """mkstemp/mkdtemp create private (0600/0700) entries; give results the user's usual permissions."""
    with contextlib.suppress(OSError):
        os.chmod(path, (0o777 if directory else 0o666) & ~_umask())


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, mode: Optional[int] = None) -> Iterator[str]:
    """The one atomic-write helper: yield a temporary path beside ``path``; on a clean exit it is
    renamed onto ``path`` (``os.replace``, atomic on one filesystem), on an exception deleted.

    Readers therefore see the old file or the complete new one, never a half-written one; a
    killed process leaves at most a hidden ``.<name>.*.tmp<suffix>`` file. The temporary name
    ends with ``path``'s suffix, so writers that pick the format from the name (``savefig``,
    ``np.savez``, Pillow) write the right format. The result gets the user's usual permissions
    (``mode``, default 0o666 minus the umask), not mkstemp's private 0600. Parents are created.

    Usage: ``with atomic_path(p) as tmp: torch.save(obj, tmp)``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp" + path.suffix, dir=str(path.parent))
    os.close(fd)
    if mode is None:
        _normal_mode(tmp)
    else:
        os.chmod(tmp, mode)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically (:func:`atomic_path`)."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return Path(path)


def save_png(path: str | os.PathLike, arr: np.ndarray) -> Path:
    """Write (H, W[, C]) float in [0, 1] (or uint8) as an 8-bit PNG, atomically."""
    from PIL import Image

    a = np.asarray(arr)
    u8 = a if a.dtype == np.uint8 else to_uint8(a)
    if u8.ndim == 3 and u8.shape[-1] == 1:
        u8 = u8[:, :, 0]
    with atomic_path(path) as tmp:
        Image.fromarray(u8).save(tmp, format="PNG")
    return Path(path)


def _json_default(o: Any):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "tolist"):
        return o.tolist()
    return str(o)


def _finite(o: Any) -> Any:
    """Replace non-finite floats by None so the JSON is standard (no NaN/Infinity tokens)."""
    if isinstance(o, float):
        return o if math.isfinite(o) else None
    if isinstance(o, dict):
        return {str(k): _finite(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_finite(v) for v in o]
    return o


def save_json(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as indented standard JSON (non-finite floats -> null), atomically."""
    text = json.dumps(_finite(json.loads(json.dumps(obj, default=_json_default))), indent=2, sort_keys=False,
                      allow_nan=False)
    return write_text_atomic(path, text + "\n")


MARKER = "run.json"  # every brgm output directory has one; --overwrite only replaces such directories


def check_writable_dir(path: str | os.PathLike, option: str = "--out") -> None:
    """Refuse, in one line, a directory that cannot be created or written: its nearest existing
    ancestor must be a directory in which a (removed at once) probe directory can be made. A real
    probe, not ``os.access``: root passes ``os.access`` on /proc and on read-only file systems."""
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    if not p.is_dir():
        raise BRGMError(f"cannot create {str(Path(path))!r}: {str(p)!r} is a file, not a directory; "
                        f"choose another {option}")
    try:
        probe = tempfile.mkdtemp(prefix=".brgm-probe-", dir=p)
    except OSError as e:
        raise BRGMError(f"cannot write to {str(p)!r} ({e.strerror or type(e).__name__}); choose an {option} "
                        f"in a writable directory") from None
    os.rmdir(probe)


class OutputDir:
    """Build a result directory atomically.

    ``check()`` (also called by the constructor) refuses an unusable target before any work:
    a file, or a non-empty directory (unless ``overwrite``, and then only one that holds a
    ``run.json``, i.e. an earlier brgm result). Inside ``with OutputDir(path) as out:`` files are
    written under ``out.tmp`` (a hidden directory beside the target); on a clean exit the
    directory is renamed into place, on an exception it is deleted, so no half-written output
    directory is ever left behind. Parent directories created for it are removed on failure too.
    """

    def __init__(self, path: str | os.PathLike, overwrite: bool = False) -> None:
        self.target = Path(path).expanduser().absolute()
        self.overwrite = overwrite
        self.tmp: Optional[Path] = None
        self.committed = False
        self._made_parents: list[Path] = []
        self.check()

    def check(self) -> None:
        t = self.target
        if t.exists() and not t.is_dir():
            raise BRGMError(f"output path {str(t)!r} is a file; give a directory name for --out")
        if t.is_dir() and any(t.iterdir()):
            if not self.overwrite:
                raise BRGMError(
                    f"output directory {str(t)!r} already exists and is not empty; choose a new --out "
                    f"or pass --overwrite to replace an earlier result"
                )
            if not (t / MARKER).is_file():
                raise BRGMError(
                    f"output directory {str(t)!r} is not empty and holds no {MARKER}, so it is not an earlier "
                    f"brgm result; --overwrite only replaces those, choose a new --out"
                )
        check_writable_dir(t.parent)

    def __enter__(self) -> "OutputDir":
        self.check()
        missing = []
        p = self.target.parent
        while not p.exists():
            missing.append(p)
            p = p.parent
        for d in reversed(missing):
            d.mkdir()
            self._made_parents.append(d)
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.partial-", dir=str(self.target.parent)))
        _normal_mode(self.tmp, directory=True)
        return self

    def path(self, *parts: str) -> Path:
        """A path inside the directory being built (its parent directories are created)."""
        assert self.tmp is not None, "use OutputDir as a context manager"
        p = self.tmp.joinpath(*parts)
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def commit(self) -> Path:
        assert self.tmp is not None
        t = self.target
        trash = None
        if t.is_dir():
            if any(t.iterdir()):
                trash = Path(tempfile.mkdtemp(prefix=f".{t.name}.old-", dir=str(t.parent)))
                os.rmdir(trash)
                os.replace(t, trash)
            else:
                os.rmdir(t)
        os.replace(self.tmp, t)
        self.tmp = None
        self.committed = True
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        return t

    def discard(self) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None
        for d in reversed(self._made_parents):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if still empty
        self._made_parents = []

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is None:
            with sigint_deferred():
                self.commit()
        else:
            self.discard()
        return False


@contextlib.contextmanager
def sigint_deferred() -> Iterator[dict]:
    """Hold Ctrl-C back inside the block; if it was pressed, raise KeyboardInterrupt at the end.

    Used while results are written, so an interrupt never leaves a half-written directory.
    Yields a dict whose ``"pressed"`` key tells whether Ctrl-C came during the block.
    """
    state = {"pressed": False}
    if threading.current_thread() is not threading.main_thread():
        yield state
        return

    def handler(signum, frame):
        state["pressed"] = True

    try:
        old = signal.signal(signal.SIGINT, handler)
    except (ValueError, OSError):  # not allowed here: run unprotected
        yield state
        return
    try:
        yield state
    finally:
        signal.signal(signal.SIGINT, old)
    if state["pressed"]:
        raise KeyboardInterrupt


def stems(paths: Sequence[str | os.PathLike]) -> list[str]:
    """Distinct, filesystem-safe names for a batch of inputs (file stems, de-duplicated)."""
    out: list[str] = []
    seen: dict[str, int] = {}
    for p in paths:
        base = "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in Path(p).stem).lstrip(".") or "image"
        s, k = base, 1
        while s in seen:
            k += 1
            s = f"{base}_{k}"
        seen[s] = 1
        out.append(s)
    return out
