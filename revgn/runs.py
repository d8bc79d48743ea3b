"""Recorded runs: long experiments write their results once, atomically, with what is needed to trace them.

    hist = recorded_run(RESULTS / "gn" / "mnist-gn-seed0.json", config, lambda: train(...))
    rec = recorded(RESULTS / "regime" / "point.json", config, lambda: {"test_acc": ...})

If the file exists and holds the same configuration, it is loaded instead of rerun. An interrupted run
leaves no record (the write is atomic). Long computations keep checkpoints in the record's scratch folder
(`scratch_for(path)`), so the next call resumes them mid-way; the folder is removed once the record is
written. A sweep made of many recorded pieces therefore resumes where it stopped. A file whose
configuration differs is never overwritten silently.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any, Callable

from .train import History
from .utils import REPO_ROOT, atomic_write_json, read_json, run_metadata

RESULTS = REPO_ROOT / "results"


def _canonical(config: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def recorded(path: str | Path | None, config: dict[str, Any], compute: Callable[[], dict[str, Any]],
             device=None) -> dict[str, Any]:
    """The JSON record stored at `path` for `config`, or `compute()` it and store it (atomically).

    path None computes without storing (book-scale runs in a chapter leave the repository untouched).
    The stored file is {"run_config": config, "meta": date/device/commit, "result": compute()}. The result is
    returned as JSON reads it back (e.g. dict keys become strings) whether it was computed or loaded.
    """
    if path is None:
        return _canonical(compute())
    path = Path(path)
    config = _canonical(config)
    if path.exists():
        stored = _read_record(path)
        if stored.get("run_config") != config:
            raise ValueError(f"{path} holds a run with another configuration; move it away or choose another path.\n"
                             f"  stored: {stored.get('run_config')}\n  asked:  {config}")
        return stored["result"]
    result = _canonical(compute())
    atomic_write_json(path, {"run_config": config, "meta": run_metadata(device), "result": result})
    shutil.rmtree(scratch_for(path), ignore_errors=True)  # its checkpoints are no longer needed
    return result


def scratch_for(path: str | Path | None) -> Path | None:
    """Where the computation of the record at `path` keeps its checkpoints (None when nothing is stored)."""
    return None if path is None else Path(path).with_suffix(".partial")


def recorded_run(path: str | Path | None, config: dict[str, Any], run: Callable[[], History], device=None) -> History:
    """Load the History recorded at `path` for `config`, or run it and record it (atomically)."""
    d = recorded(path, config, lambda: run().to_dict(), device)
    return History(d["steps"], d["epochs"], d["config"])


def load_recorded(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """A recorded result and its metadata (date, device, commit), or None when there is no such file."""
    path = Path(path)
    if not path.exists():
        return None
    stored = _read_record(path)
    return stored["result"], stored.get("meta", {})


def _read_record(path: Path) -> dict[str, Any]:
    """A record file's content; a truncated, empty or foreign file raises a ValueError naming it."""
    fix = "delete it (or restore it with git) and rerun, which records it again"
    stored = read_json(path, "record", fix)
    if not (isinstance(stored, dict) and {"run_config", "result"} <= set(stored)):
        raise ValueError(f"{path} is not a revgn record: expected the keys run_config, result and meta; {fix}")
    return stored


def recorded_histories(directory: str | Path) -> list[tuple[History, dict[str, Any]]]:
    """Every History recorded (by `recorded_run`) in a directory, with its metadata, in file-name order."""
    out = []
    for path in sorted(Path(directory).glob("*.json")) if Path(directory).is_dir() else []:
        result, meta = load_recorded(path)
        if {"steps", "epochs", "config"} <= set(result):
            out.append((History(result["steps"], result["epochs"], result["config"]), meta))
    return out


def provenance(directory: str | Path) -> str:
    """One line on what is recorded in a directory: how many records, when, on which devices, at which commits."""
    directory = Path(directory)
    metas = [load_recorded(p)[1] for p in sorted(directory.glob("*.json"))] if directory.is_dir() else []
    where = directory.relative_to(REPO_ROOT) if directory.is_relative_to(REPO_ROOT) else directory
    if not metas:
        return f"{where}/: nothing recorded yet."
    dates = sorted(m.get("date", "?") for m in metas)
    devices = sorted({m.get("device", "?") for m in metas})
    commits = sorted({m.get("commit", "?")[:10] for m in metas})
    return (f"{where}/: {len(metas)} recorded runs, {dates[0]} to {dates[-1]}, on {', '.join(devices)}, "
            f"at commit{'s' if len(commits) > 1 else ''} {', '.join(commits)}.")
