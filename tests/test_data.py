"""The loaders behave like a careful downloader: verified, atomic, safe, and clear when things go wrong.

Synthetic IDX and CIFAR-binary fixtures are served from file:// URLs; the real files in ../shared/data are
checked when present.
"""
from __future__ import annotations

import gzip
import hashlib
import io
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from revgn import data, download

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


def sha256(b: bytes) -> str:
    return hashlib.sha256(b).hexdigest()


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    return gzip.compress(header + arr.astype(np.uint8).tobytes(), mtime=0)


def cifar_bytes(n: int, seed: int) -> tuple[bytes, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n, dtype=np.uint8)
    images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
    rec = np.concatenate([labels[:, None], images.reshape(n, -1)], axis=1)
    return rec.tobytes(), images, labels


def tar_gz(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, payload in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tar.addfile(info, io.BytesIO(payload))
    return buf.getvalue()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty cache folder chosen through the environment variable, and a folder of 'remote' files."""
    root = tmp_path / "cache"
    remote = tmp_path / "remote"
    remote.mkdir()
    monkeypatch.setenv(download.ENV_VAR, str(root))
    return root, remote


def serve(monkeypatch, remote: Path, key: str, relpath: str, payload: bytes, sha: str | None = None) -> None:
    (remote / Path(relpath).name).write_bytes(payload)
    res = download.Resource(relpath, sha or sha256(payload), (f"file://{remote / Path(relpath).name}",))
    monkeypatch.setitem(download.RESOURCES, key, res)


@pytest.fixture
def fake_mnist(cache, monkeypatch):
    root, remote = cache
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", 12), ("test", 5)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n, dtype=np.uint8)
        arrays[split] = (images, labels)
        serve(monkeypatch, remote, f"mnist/{split}-images", f"mnist/{split}-img.gz", idx_bytes(images))
        serve(monkeypatch, remote, f"mnist/{split}-labels", f"mnist/{split}-lab.gz", idx_bytes(labels))
    return root, remote, arrays


def test_good_download_is_verified_cached_and_decoded(fake_mnist):
    root, remote, arrays = fake_mnist
    ds = data.load("mnist", "train", normalize=False)
    images, labels = arrays["train"]
    assert ds.x.shape == (12, 784) and ds.y.dtype == torch.int64
    assert torch.equal(ds.y, torch.from_numpy(labels.astype(np.int64)))
    assert torch.allclose(ds.x, torch.from_numpy(images.reshape(12, -1)).float() / 255)
    assert (root / "mnist/train-img.gz").exists()
    assert not list(root.rglob("*.partial")), "temporary files must not survive a download"
    # Second load reads the cache: removing the remote copy does not matter.
    for f in remote.iterdir():
        f.unlink()
    assert torch.equal(data.load("mnist", "train", normalize=False).y, ds.y)


def test_image_shape_normalisation_and_seeded_subsets(fake_mnist):
    ds = data.load("mnist", "train", flatten=False)
    assert ds.x.shape == (12, 1, 28, 28)
    raw = data.load("mnist", "train", normalize=False, flatten=False)
    assert torch.allclose(ds.x, (raw.x - 0.1307) / 0.3081, atol=1e-6)
    a = data.load("mnist", "train", n=5, seed=3)
    b = data.load("mnist", "train", n=5, seed=3)
    c = data.load("mnist", "train", n=5, seed=4)
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y)
    assert not torch.equal(a.x, c.x)
    with pytest.raises(ValueError, match="outside 1..12"):
        data.load("mnist", "train", n=13)


def test_corrupt_download_is_refused_and_does_not_poison_the_cache(cache, monkeypatch):
    root, remote = cache
    good = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    serve(monkeypatch, remote, "mnist/train-images", "mnist/img.gz", good[:-1] + b"X", sha=sha256(good))
    with pytest.raises(download.DataError) as err:
        download.fetch("mnist/train-images")
    msg = str(err.value)
    assert "SHA-256" in msg and sha256(good) in msg and "discarded" in msg
    assert not (root / "mnist/img.gz").exists()
    assert not list(root.rglob("*.partial"))
    # The good file appears upstream: the next call succeeds.
    (remote / "img.gz").write_bytes(good)
    assert download.fetch("mnist/train-images").read_bytes() == good


def test_corrupt_user_file_names_hashes_and_is_left_in_place(cache, monkeypatch):
    root, remote = cache
    good = idx_bytes(np.zeros((3, 28, 28), np.uint8))
    serve(monkeypatch, remote, "mnist/train-images", "mnist/img.gz", good)
    user_copy = root / "mnist/img.gz"
    user_copy.parent.mkdir(parents=True)
    user_copy.write_bytes(b"not the real thing")
    with pytest.raises(download.DataError) as err:
        download.fetch("mnist/train-images")
    msg = str(err.value)
    assert str(user_copy) in msg and sha256(good) in msg and sha256(b"not the real thing") in msg
    assert "REVGN_DATA" in msg
    assert user_copy.read_bytes() == b"not the real thing"


def test_missing_file_says_where_it_looked_and_how_to_fix(cache, monkeypatch):
    root, _ = cache
    with pytest.raises(download.DataError) as err:
        data.load("cifar10-subset", "train")
    msg = str(err.value)
    assert str(root / "cifar-10-subset/train_subset.bin") in msg and "REVGN_DATA" in msg
    with pytest.raises(download.DataError, match="downloading is off"):
        download.fetch("mnist/train-images", download=False)


def test_unreachable_url_gives_a_clear_error(cache, monkeypatch):
    root, remote = cache
    monkeypatch.setitem(download.RESOURCES, "mnist/train-images",
                        download.Resource("mnist/x.gz", "0" * 64, (f"file://{remote}/absent.gz",)))
    with pytest.raises(download.DataError, match="could not download mnist/x.gz"):
        download.fetch("mnist/train-images")


def cifar_archive(members: dict[str, bytes] | None = None) -> tuple[bytes, dict[str, str], dict]:
    recs = {}
    if members is None:
        members = {}
        for i, name in enumerate(download.CIFAR10_MEMBERS):
            payload, images, labels = cifar_bytes(4 if name != "test_batch.bin" else 3, seed=i)
            members[f"cifar-10-batches-bin/{name}"] = payload
            recs[name] = (images, labels)
        members["cifar-10-batches-bin/batches.meta.txt"] = b"airplane\n"
    sha1 = {Path(k).name: hashlib.sha1(v).hexdigest() for k, v in members.items() if k.endswith(".bin")}
    return tar_gz(members), sha1, recs


def test_cifar10_archive_download_and_extraction(cache, monkeypatch):
    root, remote = cache
    archive, sha1, recs = cifar_archive()
    serve(monkeypatch, remote, "cifar10/archive", "cifar-10/cifar-10-binary.tar.gz", archive)
    monkeypatch.setattr(download, "CIFAR10_MEMBERS", sha1)
    train = data.load("cifar10", "train", flatten=False, normalize=False, dtype=torch.float64)
    test = data.load("cifar10", "test")
    assert train.x.shape == (20, 3, 32, 32) and test.x.shape == (3, 3072)
    images, labels = recs["data_batch_1.bin"]
    assert torch.equal(train.y[:4], torch.from_numpy(labels.astype(np.int64)))
    assert torch.equal((train.x[:4] * 255).round().to(torch.uint8), torch.from_numpy(images))
    extracted = sorted(p.name for p in (root / download.CIFAR10_DIR).iterdir())
    assert extracted == sorted(sha1), "only the expected members are kept"


def test_truncated_archive_leaves_nothing_behind(cache, monkeypatch):
    root, remote = cache
    archive, sha1, _ = cifar_archive()
    truncated = archive[: len(archive) // 2]
    # The upstream hash is that of the truncated file, so the hash check passes and extraction must catch it.
    serve(monkeypatch, remote, "cifar10/archive", "cifar-10/cifar-10-binary.tar.gz", truncated)
    monkeypatch.setattr(download, "CIFAR10_MEMBERS", sha1)
    with pytest.raises(download.DataError, match="truncated"):
        data.load("cifar10", "train")
    assert not (root / download.CIFAR10_DIR).exists()
    assert not list(root.rglob("*.partial"))


def test_archive_with_path_traversal_is_refused(tmp_path):
    evil = tmp_path / "evil.tar.gz"
    evil.write_bytes(tar_gz({"ok.bin": b"1", "../escape.bin": b"2"}))
    with pytest.raises(download.DataError, match="escape"):
        download.safe_extract(evil, tmp_path / "out")
    assert not (tmp_path / "escape.bin").exists() and not (tmp_path / "out").exists()


def test_archive_with_symlink_is_refused(tmp_path):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        link = tarfile.TarInfo("link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    (tmp_path / "a.tar.gz").write_bytes(buf.getvalue())
    with pytest.raises(download.DataError, match="not a regular file"):
        download.safe_extract(tmp_path / "a.tar.gz", tmp_path / "out")


def test_malformed_idx_and_cifar_records_are_reported(tmp_path):
    bad = tmp_path / "bad.gz"
    bad.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 9, 1, 2])))
    with pytest.raises(download.DataError, match="header says shape"):
        data.read_idx(bad)
    rec = tmp_path / "bad.bin"
    rec.write_bytes(b"\x00" * 3000)
    with pytest.raises(download.DataError, match="3,073-byte"):
        data.read_cifar_records(rec)


def test_unknown_dataset_and_split():
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        data.load("imagenet")
    with pytest.raises(ValueError, match="split"):
        data.load("mnist", "validation")


needs_shared = pytest.mark.skipif(not (SHARED / "mnist").exists(), reason="../shared/data is not present")


@needs_shared
def test_real_mnist(monkeypatch):
    monkeypatch.setenv(download.ENV_VAR, str(SHARED))
    train = data.load("mnist", "train", download=False)
    test = data.load("mnist", "test", download=False, flatten=False)
    assert train.x.shape == (60000, 784) and test.x.shape == (10000, 1, 28, 28)
    assert train.label_counts() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    assert test.label_counts() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    # Normalised with the standard statistics, the training set has mean ~0 and std ~1.
    assert abs(train.x.mean().item()) < 1e-3 and abs(train.x.std().item() - 1) < 1e-3


@needs_shared
def test_real_cifar10_subset(monkeypatch):
    monkeypatch.setenv(download.ENV_VAR, str(SHARED))
    train = data.load("cifar10-subset", "train", download=False, flatten=False, normalize=False)
    test = data.load("cifar10-subset", "test", download=False)
    assert train.x.shape == (4000, 3, 32, 32) and test.x.shape == (1000, 3072)
    assert train.label_counts() == [396, 366, 420, 384, 422, 393, 414, 385, 407, 413]
    assert test.label_counts() == [103, 89, 100, 103, 90, 86, 112, 102, 106, 109]
    # The README's known first bytes of training image 0 (the frog), red channel.
    assert (train.x[0, 0, 0, :5] * 255).round().tolist() == [59, 43, 50, 68, 98]
    assert train.y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]


def test_teacher_student_data():
    ts = data.teacher_student(5, 3, 40, 10, seed=2)
    x, y = ts.train
    assert x.shape == (40, 5) and y.shape == (40, 1) and ts.test[0].shape == (10, 5)
    assert torch.allclose(x.norm(dim=1), torch.ones(40, dtype=torch.float64))
    assert torch.allclose(ts.teacher.norm(dim=1), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(y[:, 0], torch.relu(x @ ts.teacher.T) @ ts.signs)
    assert torch.equal(data.teacher_student(5, 3, 40, 10, seed=2).train[0], x)


def test_a_missing_cifar10_subset_is_rebuilt_from_the_official_archive(cache, monkeypatch):
    """A machine without ../shared/data: the subset (a prefix of two archive members) is rebuilt from a served
    archive, checked against the subset's own SHA-256 before anything is written, and read like a copy."""
    root, remote = cache
    archive, sha1, recs = cifar_archive()
    serve(monkeypatch, remote, "cifar10/archive", "cifar-10/cifar-10-binary.tar.gz", archive)
    monkeypatch.setattr(download, "CIFAR10_MEMBERS", sha1)
    payload, _, _ = cifar_bytes(4, seed=0)  # data_batch_1.bin of the fake archive
    prefix = payload[: 3 * download.CIFAR_RECORD]
    sub = download.Resource("cifar-10-subset/train_subset.bin", sha256(prefix), derived_from=("data_batch_1.bin", 3))
    monkeypatch.setitem(download.RESOURCES, "cifar10-subset/train", sub)
    with pytest.raises(download.DataError, match="downloading is off.*rebuild it from the official CIFAR-10"):
        data.load("cifar10-subset", "train", download=False)
    train = data.load("cifar10-subset", "train", flatten=False, normalize=False, dtype=torch.float64)
    images, labels = recs["data_batch_1.bin"]
    assert (root / sub.relpath).read_bytes() == prefix and train.x.shape == (3, 3, 32, 32)
    assert torch.equal(train.y, torch.from_numpy(labels[:3].astype(np.int64)))
    assert torch.equal((train.x * 255).round().to(torch.uint8), torch.from_numpy(images[:3]))
    # a prefix that does not hash as published is refused, and nothing is written
    (root / sub.relpath).unlink()
    monkeypatch.setitem(download.RESOURCES, "cifar10-subset/train", download.Resource(sub.relpath, "0" * 64,
                                                                            derived_from=("data_batch_1.bin", 3)))
    with pytest.raises(download.DataError, match="do not hash to"):
        data.load("cifar10-subset", "train")
    assert not (root / sub.relpath).exists() and not list(root.rglob("*.partial"))


def test_the_real_subset_is_a_prefix_of_the_archive_members_it_names():
    """The shipped subset's SHA-256 is what _derive checks: its resources name the members and record counts
    of the README's description (4,000 of data_batch_1, 1,000 of test_batch)."""
    assert download.RESOURCES["cifar10-subset/train"].derived_from == ("data_batch_1.bin", 4000)
    assert download.RESOURCES["cifar10-subset/test"].derived_from == ("test_batch.bin", 1000)
    train = SHARED / "cifar-10-subset" / "train_subset.bin"
    if train.exists():
        assert train.stat().st_size == 4000 * download.CIFAR_RECORD
