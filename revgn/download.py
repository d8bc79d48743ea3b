"""Dataset files, fetched the way a careful downloader does: official URLs, SHA-256, atomic writes, a cache
chosen by an environment variable, safe extraction.

Files live in a cache folder, ``$REVGN_DATA`` if set, else ``$XDG_CACHE_HOME/revgn`` (``~/.cache/revgn``)::

    <cache>/mnist/train-images-idx3-ubyte.gz ...
    <cache>/cifar-10/cifar-10-binary.tar.gz, <cache>/cifar-10/cifar-10-batches-bin/*.bin
    <cache>/cifar-10-subset/train_subset.bin, test_subset.bin

Every file is checked against its SHA-256 before it is used. Downloads go to a temporary file and are renamed
into place only once their hash matches, so an interrupted or corrupt download never poisons the cache; a file
the user put in the cache is never deleted, only reported. A download has an overall deadline and fails when
it stalls; its temporary file goes on any exit, and what a killed process left is removed by the next call.
Archives are extracted member by member into a temporary folder that refuses anything but regular files, and
only the archive's own files are then moved into place. The CIFAR-10 subset's files, missing, are rebuilt from
the official archive and checked against their own SHA-256. Reading the files is `revgn.data`.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from pathlib import Path

from .utils import remove_stale_partials, removed_on_signal, temporary_sibling

ENV_VAR = "REVGN_DATA"
#: Download limits, in seconds, each overridable by its environment variable: the whole download of one
#: file (over all mirrors), and a stall: a connection that brings fewer than STALL_BYTES in that long.
DEADLINE_VAR, STALL_VAR = "REVGN_DOWNLOAD_DEADLINE", "REVGN_DOWNLOAD_STALL"
DEFAULT_DEADLINE_S, DEFAULT_STALL_S, STALL_BYTES = 1800.0, 30.0, 16 * 1024


class DataError(RuntimeError):
    """A dataset file is missing, corrupt or malformed. The message says which file and what to do."""


@dataclass(frozen=True)
class Resource:
    """One file of a dataset: where it lives in the cache, where it comes from, what it must hash to."""

    relpath: str
    sha256: str
    urls: tuple[str, ...] = ()
    md5: str | None = None  # the digest the authors publish, checked in addition where known
    #: for a file without a URL of its own, the member of the official CIFAR-10 binary archive and the number of
    #: its leading records it holds; rebuilt from the archive when missing, then checked like any download
    derived_from: tuple[str, int] | None = None


_MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")


def _mnist(name: str, sha256: str) -> Resource:
    return Resource(f"mnist/{name}", sha256, tuple(m + name for m in _MNIST_MIRRORS))


RESOURCES: dict[str, Resource] = {
    "mnist/train-images": _mnist("train-images-idx3-ubyte.gz",
                                 "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
    "mnist/train-labels": _mnist("train-labels-idx1-ubyte.gz",
                                 "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
    "mnist/test-images": _mnist("t10k-images-idx3-ubyte.gz",
                                "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
    "mnist/test-labels": _mnist("t10k-labels-idx1-ubyte.gz",
                                "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    # 170,052,171 bytes; the MD5 is the one on the dataset's page, the SHA-256 that of the same file.
    "cifar10/archive": Resource("cifar-10/cifar-10-binary.tar.gz",
                                "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd",
                                ("https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz",),
                                md5="c32a1d4ab5d03f1284b67883e8d87530"),
    # records 0-3,999 of data_batch_1.bin and 0-999 of test_batch.bin of the official binary archive
    "cifar10-subset/train": Resource("cifar-10-subset/train_subset.bin",
                                     "0993cf8b8e43bc207603aef9787006995746513f5e3fa5a52e06d1b069926330",
                                     derived_from=("data_batch_1.bin", 4000)),
    "cifar10-subset/test": Resource("cifar-10-subset/test_subset.bin",
                                    "8314c96d7cd65618193bab23acdd5d4c4af15bf6dd00a1781d55beedf3be1ef5",
                                    derived_from=("test_batch.bin", 1000)),
}

# Members of the CIFAR-10 binary archive we read, with the SHA-1 the authors publish for each.
CIFAR10_MEMBERS: dict[str, str] = {
    "data_batch_1.bin": "aadd24acce27caa71bf4b10992e9e7b2d74c2540",
    "data_batch_2.bin": "c0ba65cce70568cd57b4e03e9ac8d2a5367c1795",
    "data_batch_3.bin": "1dd00a74ab1d17a6e7d73e185b69dbf31242f295",
    "data_batch_4.bin": "aab85764eb3584312d3c7f65fd2fd016e36a258e",
    "data_batch_5.bin": "26e2849e66a845b7f1e4614ae70f4889ae604628",
    "test_batch.bin": "67eb016db431130d61cd03c7ad570b013799c88c",
}
CIFAR10_DIR = "cifar-10/cifar-10-batches-bin"

def cache_dir() -> Path:
    """The data cache: ``$REVGN_DATA`` if set and non-empty, else ``$XDG_CACHE_HOME/revgn``."""
    env = os.environ.get(ENV_VAR, "").strip()
    if env:
        return Path(env).expanduser().resolve()
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")).expanduser().resolve() / "revgn"


def file_digest(path: Path, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _how_to_fill(res: Resource, root: Path) -> str:
    if res.derived_from:
        src = (f"let the loader rebuild it from the official CIFAR-10 binary archive (records 0-"
               f"{res.derived_from[1] - 1} of {res.derived_from[0]}; download=True), or copy it")
    elif res.urls:
        src = f"download it from {res.urls[0]}"
    else:
        src = "copy it from a checked copy of the dataset (e.g. ../shared/data/" + res.relpath + ")"
    return (f"To fix it, {src} to {root / res.relpath}, or point ${ENV_VAR} at a folder that holds "
            f"{res.relpath}.")


def _check(path: Path, res: Resource, root: Path) -> None:
    actual = file_digest(path)
    if actual != res.sha256:
        raise DataError(
            f"{path} is corrupt: its SHA-256 is {actual}, expected {res.sha256}. It was left in place; "
            f"delete or replace it. " + _how_to_fill(res, root))
    if res.md5 is not None and file_digest(path, "md5") != res.md5:
        raise DataError(f"{path} has the right SHA-256 but not the published MD5 {res.md5}; left in place.")


def _limit(value: float | None, var: str, default: float) -> float:
    if value is None:
        raw = os.environ.get(var, "").strip()
        try:
            value = float(raw) if raw else default
        except ValueError:
            raise ValueError(f"${var} must be a number of seconds, got {raw!r}") from None
    if not value > 0:
        raise ValueError(f"download limit {var.removeprefix('REVGN_DOWNLOAD_').lower()} must be > 0 s, got {value}")
    return float(value)


def _copy_bounded(response, out, deadline: float, stall_s: float) -> None:
    """Copy a response to `out`, failing once the overall deadline passes or the transfer stalls.

    A stall is a window of `stall_s` seconds that brought fewer than STALL_BYTES (a server that trickles a byte
    every few seconds never trips a per-read timeout). A read that brings nothing at all ends with the
    socket's own timeout, also `stall_s`.
    """
    window_start, window_bytes = time.monotonic(), 0
    while chunk := response.read1(1 << 16):  # read1: at most one socket read, so the clock is checked often
        out.write(chunk)
        now, window_bytes = time.monotonic(), window_bytes + len(chunk)
        if now > deadline:
            raise TimeoutError(f"the download did not finish before its deadline (${DEADLINE_VAR})")
        if now - window_start >= stall_s:
            if window_bytes < STALL_BYTES:
                raise TimeoutError(f"the transfer stalled: {window_bytes} bytes in {now - window_start:.0f} s "
                                   f"(${STALL_VAR} = {stall_s:g} s)")
            window_start, window_bytes = now, 0


def _download(res: Resource, dest: Path, root: Path, deadline_s: float | None = None,
              stall_s: float | None = None) -> None:
    """Fetch `res` into `dest` through a temporary file; rename only after the hash matches.

    The temporary file is removed on any exit, SIGTERM included; a killed earlier download's leftovers are
    removed before starting (`revgn.utils.remove_stale_partials`).
    """
    deadline_s, stall_s = _limit(deadline_s, DEADLINE_VAR, DEFAULT_DEADLINE_S), _limit(stall_s, STALL_VAR, DEFAULT_STALL_S)
    deadline = time.monotonic() + deadline_s
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(dest)
    errors = []
    for url in res.urls:
        if time.monotonic() > deadline:
            errors.append(f"{url}: not tried, the deadline of {deadline_s:g} s (${DEADLINE_VAR}) had passed")
            continue
        tmp = temporary_sibling(dest)
        try:
            with removed_on_signal(tmp), open(tmp, "wb") as out, \
                    urllib.request.urlopen(url, timeout=min(stall_s, deadline - time.monotonic())) as response:
                _copy_bounded(response, out, deadline, stall_s)
            actual = file_digest(tmp)
            if actual != res.sha256:
                errors.append(f"{url}: SHA-256 {actual}, expected {res.sha256} (download discarded)")
                continue
            if res.md5 is not None and file_digest(tmp, "md5") != res.md5:
                errors.append(f"{url}: MD5 does not match the published {res.md5} (download discarded)")
                continue
            os.replace(tmp, dest)
            return
        except (urllib.error.URLError, OSError, ValueError) as exc:  # TimeoutError is an OSError
            errors.append(f"{url}: {exc}")
        finally:
            tmp.unlink(missing_ok=True)
    raise DataError(f"could not download {res.relpath} into {root}:\n  " + "\n  ".join(errors) + "\n"
                    + _how_to_fill(res, root))


def fetch(key: str, *, download: bool = True, deadline_s: float | None = None, stall_s: float | None = None) -> Path:
    """Return the verified local path of resource `key`, downloading it into the cache if allowed.

    deadline_s, stall_s: limits of a download (default: $REVGN_DOWNLOAD_DEADLINE, 1800 s, and
    $REVGN_DOWNLOAD_STALL, 30 s; see `_copy_bounded`).
    """
    if key not in RESOURCES:
        raise KeyError(f"unknown resource {key!r}; known: {sorted(RESOURCES)}")
    res, root = RESOURCES[key], cache_dir()
    path = root / res.relpath
    if not path.exists():
        if download and res.derived_from:
            _derive(res, path, root)
        elif not (download and res.urls):
            why = "downloading is off" if res.urls or res.derived_from else "it has no public download URL"
            raise DataError(f"{res.relpath} is missing: looked for {path} ({why}). " + _how_to_fill(res, root))
        else:
            _download(res, path, root, deadline_s, stall_s)
    _check(path, res, root)
    return path


CIFAR_RECORD = 1 + 3 * 32 * 32  # bytes per record of the CIFAR-10 binary format: a label, then R, G, B planes


def _derive(res: Resource, path: Path, root: Path) -> None:
    """Rebuild a file that is a prefix of a CIFAR-10 archive member (`Resource.derived_from`): the archive is
    downloaded and its members verified as for "cifar10", the leading records are checked against the file's
    SHA-256 before anything is written, and the file appears atomically."""
    member, records = res.derived_from
    try:
        source = cifar10_members(download=True) / member
    except DataError as err:
        raise DataError(f"{res.relpath} is missing: looked for {path}, then tried to rebuild it from the official "
                        f"CIFAR-10 archive, which failed: {err}\n" + _how_to_fill(res, root)) from err
    with open(source, "rb") as fh:
        payload = fh.read(records * CIFAR_RECORD)
    if len(payload) != records * CIFAR_RECORD:
        raise DataError(f"{source} holds {len(payload) // CIFAR_RECORD} records, fewer than the {records} that "
                        f"{res.relpath} takes from it")
    if hashlib.sha256(payload).hexdigest() != res.sha256:
        raise DataError(f"the first {records} records of {source} do not hash to {res.sha256}, the SHA-256 of "
                        f"{res.relpath}; nothing was written. " + _how_to_fill(res, root))
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(path)
    tmp = temporary_sibling(path)
    try:
        with removed_on_signal(tmp):
            tmp.write_bytes(payload)
            os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def safe_extract(archive: Path, dest: Path, members: dict[str, str] | None = None) -> None:
    """Extract a tar archive into `dest`, refusing absolute paths, '..', links and special files.

    Extraction goes into a temporary sibling folder; only when every member was read in full (and, with
    `members`, name -> SHA-1, each kept member hashes as published) are the extracted files moved into `dest`,
    each replacing its own name there. A truncated archive leaves nothing behind, and no file in `dest` that
    the archive does not hold is ever touched. With `members`, only those base names are kept.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_partials(dest)
    tmp = temporary_sibling(dest, directory=True)
    try:
        with removed_on_signal(tmp):
            with tarfile.open(archive, "r:*") as tar:
                for member in tar:
                    name = Path(member.name)
                    if name.is_absolute() or ".." in name.parts:
                        raise DataError(f"{archive}: member {member.name!r} would escape the target folder; refused")
                    if member.isdir():
                        continue
                    if not member.isfile():
                        raise DataError(f"{archive}: member {member.name!r} is not a regular file; refused")
                    if members is not None and name.name not in members:
                        continue
                    # The "data" filter re-checks the path and drops permission bits and ownership.
                    tar.extract(member, tmp, filter="data")
            extracted = {p.relative_to(tmp): p for p in tmp.rglob("*") if p.is_file()}
            if members is not None:
                found = {rel.name: p for rel, p in extracted.items()}
                for fname, sha1 in members.items():
                    if fname not in found:
                        raise DataError(f"{archive}: expected member {fname} is missing")
                    if file_digest(found[fname], "sha1") != sha1:
                        raise DataError(f"{archive}: member {fname} does not match its published SHA-1 {sha1}")
                extracted = {Path(fname): found[fname] for fname in members}  # flattened to dest/<name>
            for rel, src in extracted.items():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                os.replace(src, dest / rel)
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        raise DataError(f"{archive} could not be extracted ({type(exc).__name__}: {exc}); is it truncated? "
                        f"Nothing was written to {dest}.") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp)


def cifar10_members(download: bool) -> Path:
    """The folder of the official binary archive's members, extracted (and verified) if not yet there."""
    folder = cache_dir() / CIFAR10_DIR
    if not all((folder / m).exists() for m in CIFAR10_MEMBERS):
        archive = fetch("cifar10/archive", download=download)
        safe_extract(archive, folder, CIFAR10_MEMBERS)
    return folder


def cifar10_member(name: str, download: bool) -> Path:
    """One member of the official binary archive (`CIFAR10_MEMBERS`), extracted if needed, checked against its
    published SHA-1 before it is read."""
    folder = cifar10_members(download)
    path = folder / name
    if file_digest(path, "sha1") != CIFAR10_MEMBERS[name]:
        raise DataError(f"{path} does not match its published SHA-1 {CIFAR10_MEMBERS[name]}; left in place. "
                        f"Delete {folder} to extract it again from the archive.")
    return path
