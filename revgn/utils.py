"""Small shared helpers: seeding, devices, argument checks, atomic file writes, run metadata."""
from __future__ import annotations

import contextlib
import datetime as _dt
import glob
import json
import numbers
import os
import random
import shutil
import signal
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent


def seed_everything(seed: int) -> torch.Generator:
    """Seed Python, NumPy and torch; return a fresh CPU generator seeded with `seed`.

    Functions that draw random numbers take an explicit generator where they can, so that a chapter's
    numbers do not depend on how many draws happened before.
    """
    if not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative int, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def resolve_device(device: str | torch.device | None = None) -> torch.device:
    """'auto' or None picks CUDA when present, else CPU; anything else is passed to torch.device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("device='cuda' was asked for, but torch sees no CUDA device; use device='cpu'")
    return device


def check_int(name: str, value: Any, minimum: int | None = None) -> int:
    """`value` as an int, or a TypeError/ValueError that names the argument (bools and 1.5 are refused)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if minimum is not None and value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


# ------------------------------------------------------------------------------------------ temporary files
# A file is written as `.<name>.<pid>.<random>.partial` beside its destination and renamed into place when
# complete. The pid tells a later call whether the writer is gone: its leftovers (after SIGKILL, a power cut)
# are removed then, while a temporary file of a process that still runs (a parallel worker) is left alone.

def temporary_sibling(path: Path, directory: bool = False) -> Path:
    """A new, empty temporary file (or folder) beside `path`, named for this process (see above)."""
    prefix, suffix = f".{path.name}.{os.getpid()}.", ".partial"
    if directory:
        return Path(tempfile.mkdtemp(dir=path.parent, prefix=prefix, suffix=suffix))
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=prefix, suffix=suffix)
    os.close(fd)
    return Path(tmp)


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_partials(path: Path) -> list[Path]:
    """Remove the temporary siblings of `path` left by processes that no longer run; return what was removed."""
    removed = []
    for tmp in Path(path).parent.glob(f".{glob.escape(Path(path).name)}.*.partial"):
        pid = tmp.name[len(Path(path).name) + 2:].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _process_alive(int(pid)):
            shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
            removed.append(tmp)
    return removed


def _remove(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


@contextlib.contextmanager
def removed_on_signal(path: Path) -> Iterator[None]:
    """Delete `path` if SIGTERM or SIGHUP arrives while the block runs, then let the signal act as it would have.

    (SIGINT needs nothing: it raises KeyboardInterrupt, and the caller's cleanup runs.) The previous handler
    is called afterwards (e.g. a job scheduler's), or the default action taken (the process ends by the
    signal). Signal handlers can only be set in the main thread; elsewhere the block runs unguarded.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous: dict[int, Any] = {}

    def handler(signum, frame):
        _remove(Path(path))
        for s, h in previous.items():
            signal.signal(s, h)
        before = previous[signum]
        if callable(before):
            before(signum, frame)
        elif before != signal.SIG_IGN:  # the default action: end the process by this signal
            signal.signal(signum, signal.SIG_DFL)
            os.kill(os.getpid(), signum)

    for s in (signal.SIGTERM, signal.SIGHUP):
        previous[s] = signal.signal(s, handler)
    try:
        yield
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


@contextlib.contextmanager
def atomic_destination(path: str | os.PathLike, directory: bool = False) -> Iterator[Path]:
    """Yield a temporary sibling of `path` to fill; on success it is renamed onto `path` atomically.

    On any exit (an exception, Ctrl-C, SIGTERM, SIGHUP) the temporary is removed and `path` keeps its old
    content; leftovers of killed processes are removed first (`remove_stale_partials`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = temporary_sibling(path, directory)
    try:
        with removed_on_signal(tmp):
            yield tmp
            os.replace(tmp, path)
    finally:
        if tmp.exists():
            _remove(tmp)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same folder and an atomic rename.

    An interrupted write (an exception, a signal, a kill) leaves the old file (or nothing) in place, never a
    half-written one; see `atomic_destination`.
    """
    with atomic_destination(path) as tmp:
        with open(tmp, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    return Path(path)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Serialise `obj` as indented JSON and write it atomically (see `atomic_write_bytes`).

    NaN and infinity are refused (they are not JSON): a ValueError names the file and nothing is written.
    """
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, default=_json_default, allow_nan=False)
    except ValueError as err:
        raise ValueError(f"refusing to write {path}: the data hold NaN or infinity, which JSON cannot store "
                         f"({err}); a diverged run must raise, not be recorded") from err
    return atomic_write_bytes(path, (text + "\n").encode())


def read_json(path: str | os.PathLike, what: str = "JSON file", fix: str = "delete it to recompute it") -> Any:
    """Parse the JSON at `path`; a truncated, empty or invalid file raises a ValueError that names it."""
    path = Path(path)
    try:
        text = path.read_text()
    except UnicodeDecodeError as err:
        raise ValueError(f"{path} is not a readable {what}: it is not UTF-8 text ({err}); {fix}") from err
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        detail = "it is empty" if not text.strip() else f"invalid JSON at line {err.lineno} column {err.colno} ({err.msg})"
        raise ValueError(f"{path} is not a readable {what}: {detail}, probably truncated; {fix}") from err


def _json_default(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu().tolist()
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, (torch.dtype, torch.device, Path)):
        return str(obj)
    raise TypeError(f"cannot serialise {type(obj).__name__} to JSON")


def git_commit() -> str:
    """The repository's HEAD commit (with '+dirty' when the work tree has changes), or 'unknown'."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, check=True).stdout.strip()
        return head + ("+dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def run_metadata(device: torch.device | str | None = None) -> dict[str, str]:
    """Date, device, commit and versions: what a recorded result must carry to be traceable."""
    device = resolve_device(device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_model()
    return {
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "device": f"{device} ({name})",
        "commit": git_commit(),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "kernels": kernels(),
    }


def kernels() -> str:
    """Which CPU kernels compute here (see the README's "Portable numbers"): the pinned ones, or not."""
    return (f"aten {torch.backends.cpu.get_cpu_capability()}, MKL_CBWR={os.environ.get('MKL_CBWR', 'unset')}, "
            f"ONEDNN_MAX_CPU_ISA={os.environ.get('ONEDNN_MAX_CPU_ISA', 'unset')}")


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), or the platform's processor string."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform
    return platform.processor() or "unknown CPU"
