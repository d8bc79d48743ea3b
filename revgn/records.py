"""Stored runs: a `Record` (spec, history, final metrics, provenance, or the failure), its place in a store
folder (`<store>/<spec.key>.json`, with the scratch folder `<key>.partial` of its checkpoints and lock while it
trains), the lock itself, and one-line summaries of a set of records (when, where, by which code). A
measurement that is not one training run (Theorem 4.3's flow comparison, over several runs) is a record of
its own kind (`Measurement`), stored the same way under the key of its kind and setting (`save_measurement`,
`load_measurement`), and tied to the function that computed it as well as to the training path.

A record is written once, atomically, when its run ends; reading one checks that its content hashes to its
name and holds a finished run's metrics or a failure, never both, so a damaged file is an error naming it.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import math
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .fingerprint import current as current_fingerprint
from .fingerprint import module_of
from .history import History
from .spec import SCHEMA, RunSpec
from .utils import REPO_ROOT, atomic_write_json, read_json, run_metadata

RESULTS = REPO_ROOT / "results"


class FromCode:
    """What a record knows of the code that computed it, through its `provenance`: a run's `Record` and a
    `Measurement` alike."""

    provenance: dict[str, Any]

    @property
    def fingerprint(self) -> dict | None:
        """The code that computed the record (`revgn.fingerprint`); None for a record of unknown code."""
        return self.provenance.get("fingerprint")

    def changes(self) -> list[str]:
        """Why the running code is not the code that computed this record ([] when it is: not stale)."""
        from .fingerprint import changes

        return changes(self.fingerprint)

    @property
    def stale(self) -> bool:
        return bool(self.changes())


@dataclass
class Record(FromCode):
    """A finished run: its spec, its `History`, the final metrics, and where and when it was computed.

    `failure` is None for a run that finished, else the reason it stopped (a non-finite loss, features GN
    cannot invert); the history then ends where the run stopped and `metrics` is empty.
    """

    spec: RunSpec
    history: History
    metrics: dict[str, float]
    provenance: dict[str, str]
    failure: str | None = None

    @property
    def ok(self) -> bool:
        return self.failure is None

    def to_dict(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "key": self.spec.key, "spec": self.spec.to_dict(), "failure": self.failure,
                "history": self.history.to_dict(), "metrics": self.metrics, "provenance": self.provenance}

    @classmethod
    def load(cls, path: str | Path) -> "Record":
        """Read a record; a file that is unreadable or whose content does not hash to its name is an error."""
        path = Path(path)
        fix = "delete it (or restore it with git); the run is then recomputed"
        d = read_json(path, "run record", fix)
        if not (isinstance(d, dict) and {"spec", "history", "metrics", "provenance"} <= set(d)):
            raise ValueError(f"{path} is not a run record: expected the keys spec, history, metrics, provenance; {fix}")
        if d.get("schema") != SCHEMA:
            raise ValueError(f"{path} is a record of schema {d.get('schema')}, this revgn reads schema {SCHEMA}; {fix}")
        try:
            spec = RunSpec.from_dict(d["spec"])
        except ValueError as err:
            raise ValueError(f"{path}: {err}; {fix}") from err
        if spec.key != path.stem:
            raise ValueError(f"{path} holds the record of another run: its spec hashes to {spec.key[:16]}..., not to "
                             f"its file name; {fix}")
        problem = _invalid(d)
        if problem:
            raise ValueError(f"{path} is not a valid run record: {problem}; {fix}")
        h = d["history"]
        return cls(spec, History(h["steps"], h["epochs"], h["config"]), d["metrics"], d["provenance"], d.get("failure"))


def _invalid(d: dict) -> str | None:
    """What is wrong with a record's content (None: nothing). A record holds exactly one of its final metrics
    (a finished run: finite numbers) and a failure (a string, with empty metrics), and a history of per-step
    and per-evaluation columns of equal lengths with the fields every run logs."""
    metrics, failure, h = d["metrics"], d.get("failure"), d["history"]
    if not isinstance(metrics, dict) or not all(isinstance(k, str) for k in metrics):
        return f"metrics must be a mapping of names to numbers, got {type(metrics).__name__}"
    if failure is not None and not isinstance(failure, str):
        return f"failure must be a message or null, got {failure!r}"
    if (failure is None) == (not metrics):
        return "it must hold either final metrics (a finished run) or a failure, not both nor neither"
    bad = [k for k, v in metrics.items() if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
    if bad:
        return f"metrics {bad[:3]} are not finite numbers"
    if not (isinstance(h, dict) and {"steps", "epochs", "config"} <= set(h)) or \
            not all(isinstance(h[t], dict) for t in ("steps", "epochs", "config")):
        return "history must hold the mappings steps, epochs and config"
    for table, required in (("steps", ("epoch", "loss")), ("epochs", ("epoch",))):
        cols = h[table]
        missing = [c for c in required if c not in cols]
        if missing:
            return f"history.{table} lacks {missing}"
        lengths = {k: len(v) if isinstance(v, list) else None for k, v in cols.items()}
        if None in lengths.values() or len(set(lengths.values())) > 1:
            return f"history.{table} columns must be lists of one length, got {lengths}"
    if failure is None and not h["epochs"]["epoch"]:
        return "a finished run's history has no evaluation"
    if not isinstance(d["provenance"], dict):
        return "provenance must be a mapping"
    return None


def record_path(store: str | Path, spec: RunSpec) -> Path:
    """Where the record of `spec` lives in a store folder: <store>/<spec.key>.json."""
    return Path(store) / f"{spec.key}.json"


def scratch_for(path: str | Path) -> Path:
    """The folder where the run recorded at `path` keeps its checkpoints while it trains."""
    return Path(path).with_suffix(".partial")


class StaleRecordError(RuntimeError):
    """A record computed by other code than the running one, read where stale records are refused."""


class RunInProgressError(RuntimeError):
    """Another process holds the run's lock: it is training the same spec into the same store."""


@contextlib.contextmanager
def exclusive(scratch: Path):
    """Hold the lock `scratch/lock` of a run, or raise `RunInProgressError` at once if another process holds it.

    Two processes training one spec into one store would write the same checkpoint and record (a second sweep
    started over the first, or a worker that outlived its sweep). The lock is an advisory `flock`, released by
    the kernel when its holder exits, however it exits, so no stale lock survives a killed run.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    with open(scratch / "lock", "a") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunInProgressError(f"run {scratch.stem[:12]} is being trained by another process (it holds "
                                     f"{scratch / 'lock'}); wait for it, or stop it, then run this again") from None
        try:
            yield
        finally:  # a run that stopped before its first checkpoint (bad input, say) leaves the store as it was
            if scratch.is_dir() and [p.name for p in scratch.iterdir()] == ["lock"]:
                shutil.rmtree(scratch, ignore_errors=True)


def records(store: str | Path) -> list[Record]:
    """Every record in a store folder, in file-name order; a bad file is an error that names it."""
    store = Path(store)
    return [Record.load(p) for p in sorted(store.glob("*.json"))] if store.is_dir() else []


def provenance(recs: list[Record], where: str | Path = "", code: bool = True) -> str:
    """One line on a set of records: how many, when, on which devices and CPUs, at which commits, and (code=True)
    how many are stale (`staleness`; False in a chapter's checked cells, since it depends on the kernels)."""
    if not recs:
        return f"{where}: nothing recorded." if where else "nothing recorded."
    meta = [r.provenance for r in recs]
    dates = sorted(m.get("date", "?") for m in meta)
    devices = sorted({m.get('device', '?') for m in meta})
    commits = sorted({m.get("commit", "?")[:10] for m in meta})
    head = f"{where}: " if where else ""
    return (f"{head}{len(recs)} recorded runs, {dates[0]} to {dates[-1]}, on {', '.join(devices)}, "
            f"at commit{'s' if len(commits) > 1 else ''} {', '.join(commits)}." + (" " + staleness(recs) if code else ""))


def staleness(recs: list[FromCode]) -> str:
    """How many of some records (runs or measurements) other code computed (`FromCode.stale`), in a sentence.
    It depends on the code and the CPU kernels that run now, so a chapter prints it outside its checked cells."""
    if not recs:
        return "Nothing recorded."
    unknown = sum(r.fingerprint is None for r in recs)
    stale = sum(r.stale for r in recs) - unknown
    if not stale + unknown:
        return f"All {len(recs)} were computed by this code, or by code shown to give the same numbers."
    parts = [f"{stale} computed by other code than this commit's and not shown to give the same numbers"] * bool(stale) \
        + [f"{unknown} computed from trees with uncommitted changes (code unknown)"] * bool(unknown)
    return f"Of these {len(recs)}: " + "; ".join(parts) + " (stale; `python -m revgn.recompute` checks them)."


# ------------------------------------------------------------------- measurements: records of other kinds
def measurement_key(kind: str, setting: dict) -> str:
    """The content address of a measurement of `kind` (a name, e.g. "flow"): the SHA-256 of the canonical JSON
    of its kind, `SCHEMA` and its setting (everything that decides its numbers, its seed included)."""
    canonical = json.dumps({"kind": kind, "schema": SCHEMA, "setting": setting}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


@dataclass
class Measurement(FromCode):
    """A recorded measurement of `kind` at `setting`: its `result` (JSON), computed by the function its
    provenance names as `measured_by` ("revgn.<module>:<function>", called as function(setting) -> result,
    which is how `revgn.recompute` recomputes it)."""

    kind: str
    setting: dict[str, Any]
    result: dict[str, Any]
    provenance: dict[str, Any]

    @property
    def key(self) -> str:
        return measurement_key(self.kind, self.setting)

    @classmethod
    def load(cls, path: str | Path) -> "Measurement":
        """Read a measurement; a file that is unreadable or whose content is not the measurement its name says
        is an error naming it."""
        path = Path(path)
        fix = "delete it (or restore it with git); it is then recomputed"
        d = read_json(path, "measurement record", fix)
        if not (isinstance(d, dict) and {"kind", "schema", "setting", "result", "provenance"} <= set(d)):
            raise ValueError(f"{path} is not a measurement record: expected kind, schema, setting, result, provenance; "
                             f"{fix}")
        if measurement_key(d["kind"], d["setting"]) != path.stem or d["schema"] != SCHEMA:
            raise ValueError(f"{path} holds another measurement than its name says ({d['kind']!r}, schema "
                             f"{d['schema']}, setting {d['setting']}); {fix}")
        return cls(d["kind"], d["setting"], d["result"], d["provenance"])


def save_measurement(store: str | Path, kind: str, setting: dict, result: dict, measured_by: str,
                     device: str = "cpu") -> Path:
    """Write a measurement once, atomically, as <store>/<key>.json with its provenance: date, device, commit,
    `measured_by` (the function that computed `result` from `setting`, "revgn.<module>:<function>") and the
    fingerprint of the training path and that function's module; returns its path."""
    also = (module_of(measured_by),)  # a malformed name is an error before anything is written
    setting = json.loads(json.dumps(setting))  # tuples become lists: the form it is read back in
    key = measurement_key(kind, setting)
    provenance = {**run_metadata(device), "measured_by": measured_by, "fingerprint": current_fingerprint(also)}
    return atomic_write_json(Path(store) / f"{key}.json", {"kind": kind, "schema": SCHEMA, "setting": setting,
                                                           "result": result, "provenance": provenance})


def load_measurement(store: str | Path, kind: str, setting: dict) -> Measurement | None:
    """The recorded measurement of `kind` at `setting`, or None when there is none; a file that is unreadable
    or whose content is not the measurement its name says is an error naming it."""
    path = Path(store) / f"{measurement_key(kind, json.loads(json.dumps(setting)))}.json"
    return Measurement.load(path) if path.exists() else None
