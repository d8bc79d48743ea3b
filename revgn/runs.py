"""Recorded runs: long experiments write their history once, atomically, with what is needed to trace them.

    hist = recorded_run(RESULTS / "gn" / "mnist-gn-seed0.json", config, lambda: train(...))

If the file exists and holds the same configuration, it is loaded instead of rerun. An interrupted run
leaves no file (the write is atomic), so the next call starts it again cleanly; a file whose configuration
differs is never overwritten silently.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

from .train import History
from .utils import REPO_ROOT, atomic_write_json, run_metadata

RESULTS = REPO_ROOT / "results"


def _canonical(config: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(config, sort_keys=True, default=str))


def recorded_run(path: str | Path, config: dict[str, Any], run: Callable[[], History], device=None) -> History:
    """Load the history recorded at `path` for `config`, or run it and record it (atomically)."""
    path = Path(path)
    config = _canonical(config)
    if path.exists():
        stored = json.loads(path.read_text())
        if stored.get("run_config") != config:
            raise ValueError(f"{path} holds a run with another configuration; move it away or choose another path.\n"
                             f"  stored: {stored.get('run_config')}\n  asked:  {config}")
        return History(stored["steps"], stored["epochs"], stored["config"])
    hist = run()
    atomic_write_json(path, {**hist.to_dict(), "run_config": config, "meta": run_metadata(device)})
    return hist


def load_recorded(path: str | Path) -> tuple[History, dict[str, Any]] | None:
    """A recorded history and its metadata, or None when there is no such file."""
    path = Path(path)
    if not path.exists():
        return None
    stored = json.loads(path.read_text())
    return History(stored["steps"], stored["epochs"], stored["config"]), stored.get("meta", {})
