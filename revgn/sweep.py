"""Sweeps: a grid is a list of run specs; the ones not yet recorded are dispatched through submitit.

For example::

    python -m revgn.sweep revgn.experiments.regime_map:book --list          # what is recorded, what is missing
    python -m revgn.sweep revgn.experiments.regime_map:book --workers 2     # run the rest here, 2 processes
    python -m revgn.sweep GRID --executor slurm --partition gpu --gpus-per-node 1 --timeout-min 600

GRID names a function `module:function` that returns a `Grid` (a topic and its specs). The function may read
the records: a grid whose learning rates are bracketed, or whose later seeds reuse a rate chosen on the first,
grows as its records arrive. The command therefore runs in rounds, asking for the grid again after each one,
until every run it lists is recorded (or a run failed). Every run goes through
`revgn.runs.run`, so it is recorded as `results/<topic>/<spec.key>.json` the moment it finishes, resumes from
its checkpoint if it was interrupted, and is skipped once recorded: an interrupted sweep (a killed worker, a
killed driver, a preempted SLURM job) is resumed by running the same command again. The executors are
submitit's: "local" (worker processes on this machine, at most `--workers` at a time), "slurm" (one job
array, `--workers` jobs at a time) and "debug" (in this process, for tracebacks).
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import inspect
import signal
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from .records import RESULTS, Record, record_path, scratch_for
from .runs import run
from .spec import RunSpec

EXECUTORS = ("local", "slurm", "debug")


@dataclass(frozen=True)
class Grid:
    """A named list of run specs, recorded under results/<topic>/."""

    topic: str
    specs: tuple[RunSpec, ...]

    def __post_init__(self):
        object.__setattr__(self, "specs", tuple(self.specs))
        keys = [s.key for s in self.specs]
        if len(set(keys)) != len(keys):
            raise ValueError(f"grid {self.topic!r} lists the same run more than once")

    @property
    def store(self) -> Path:
        return RESULTS / self.topic


def load_grid(name: str, store: str | Path | None = None) -> Grid:
    """The Grid returned by the function `module:function` (given `store=` when it takes one and a store is
    named: a grid that reads its records reads them there); errors say what was wrong with the name."""
    module, _, func = name.partition(":")
    if not module or not func:
        raise ValueError(f"a grid is named module:function (e.g. revgn.experiments.regime_map:book), got {name!r}")
    try:
        f = getattr(importlib.import_module(module), func)
    except (ImportError, AttributeError) as err:
        raise ValueError(f"cannot load grid {name!r}: {err}") from err
    grid = f(store=store) if store is not None and "store" in inspect.signature(f).parameters else f()
    if not isinstance(grid, Grid):
        raise TypeError(f"{name} returned a {type(grid).__name__}, not a revgn.sweep.Grid")
    return grid


#: what `status` can say of a run; "stale" is recorded by other code than the running one (`Record.stale`),
#: "unknown code" recorded without a fingerprint (before fingerprints, or from a dirty tree)
STATES = ("recorded", "stale", "unknown code", "interrupted", "missing")


def status(specs, store: str | Path) -> dict[str, str]:
    """spec key -> one of STATES ("interrupted": a checkpoint exists)."""
    out = {}
    for spec in specs:
        path = record_path(store, spec)
        if path.exists():
            rec = Record.load(path)
            out[spec.key] = "recorded" if not rec.stale else "unknown code" if rec.fingerprint is None else "stale"
        else:
            out[spec.key] = "interrupted" if any(scratch_for(path).glob("*.ckpt")) else "missing"
    return out


def _done(state: str) -> bool:
    """A run with a record, of whichever code: a sweep does not recompute it (delete a record to recompute it)."""
    return state in ("recorded", "stale", "unknown code")


#: errors a rerun cannot cure: the same spec on the same code fails the same way (fix the spec or the code)
DETERMINISTIC = ("ValueError", "TypeError", "KeyError", "AttributeError", "IndexError", "FileNotFoundError",
                 "NotImplementedError", "AssertionError", "ZeroDivisionError", "ImportError", "ModuleNotFoundError",
                 "StaleRecordError", "DataError")


def explain(err: BaseException) -> tuple[str, bool]:
    """A failed run's own error, "Type: message" (from the worker's traceback, which submitit wraps in its own
    error ending in a log path), and whether running the sweep again can help: not for a deterministic error
    (`DETERMINISTIC`), yes for an interruption, a killed or lost worker, a run another process holds."""
    text = str(err).strip()
    if "failed during processing with trace:" in text:  # submitit's FailedJobError: the worker's traceback inside
        trace = text.split("----------------------")[1] if text.count("----------------------") >= 2 else text
        lines = [ln for ln in trace.strip().splitlines() if ln.strip()]
        heads = [i for i, ln in enumerate(lines) if not ln.startswith((" ", "Traceback", "During handling",
                                                                       "The above exception"))]
        line = " ".join(ln.strip() for ln in lines[heads[-1]:]) if heads else lines[-1]
    else:  # raised in this process (debug executor), or submitit's own: the job was killed or never finished
        first = text.splitlines()[0] if text else ""
        line = f"{type(err).__name__}: {first}" if first else type(err).__name__
    kind = line.split(":", 1)[0].strip().rsplit(".", 1)[-1]
    return line, kind not in DETERMINISTIC


def _run_one(spec: dict, store: str, device: str) -> str:
    """What a worker does: one run, recorded (the spec travels as plain JSON data). SIGINT is how the driver
    stops a local worker (`_stop`), so the worker takes it as KeyboardInterrupt even where it was started with
    SIGINT ignored (any background job of a shell script, `nohup ... &`)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)
    return run(RunSpec.from_dict(spec), store, device=device).spec.key


def dispatch(specs, store: str | Path, *, executor: str = "local", workers: int = 2, folder: str | Path | None = None,
             device: str = "cpu", partition: str | None = None, timeout_min: int = 60, gpus_per_node: int = 0,
             progress: bool = True, poll_s: float = 0.5) -> dict[str, Exception]:
    """Run every spec that has no record in `store`, through submitit; return {key: error} of the failed ones.

    A failed or killed run does not stop the others; run `dispatch` again to resume it (from its checkpoint).
    folder: where submitit keeps job logs (default: `<store>/.submitit`).
    """
    import submitit

    if executor not in EXECUTORS:
        raise ValueError(f"executor must be one of {EXECUTORS}, got {executor!r}")
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    if executor == "slurm" and not partition:
        raise ValueError("the slurm executor needs a partition (--partition)")
    store = Path(store)
    todo = [s for s in specs if not _done(status([s], store)[s.key])]
    failures: dict[str, Exception] = {}
    if not todo:
        return failures
    ex = submitit.AutoExecutor(folder=folder or store / ".submitit", cluster=executor)
    params = {"timeout_min": timeout_min, "gpus_per_node": gpus_per_node, "name": f"revgn-{store.name}"}
    if executor == "slurm":
        params.update(slurm_partition=partition, slurm_array_parallelism=workers)
    ex.update_parameters(**params)
    bar = tqdm(total=len(todo), desc=f"sweep {store.name}", disable=not progress)
    args = [(s.to_dict(), str(store), device) for s in todo]
    if executor == "slurm":  # one array; SLURM runs `workers` of it at a time
        jobs = dict(zip([s.key for s in todo], ex.map_array(_run_one, *zip(*args))))
        pending = dict(jobs)
    else:  # local and debug: keep at most `workers` jobs running
        queue, pending = list(zip([s.key for s in todo], args)), {}
    try:
        with _signals_interrupt():
            while pending or (executor != "slurm" and queue):
                while executor != "slurm" and queue and len(pending) < workers:
                    key, a = queue.pop(0)
                    pending[key] = ex.submit(_run_one, *a)
                for key, job in list(pending.items()):
                    if job.done():
                        try:
                            job.result()
                        except Exception as err:  # a failed or killed run: reported (`explain`)
                            failures[key] = err
                        del pending[key]
                        bar.update()
                time.sleep(poll_s if pending else 0)
    except KeyboardInterrupt:  # SIGINT or SIGTERM to the driver: stop its workers too, keep their checkpoints
        _stop(pending.values())
        raise
    finally:
        bar.close()
    return failures


@contextlib.contextmanager
def _signals_interrupt():
    """SIGTERM (a scheduler's, `kill`) and SIGINT are KeyboardInterrupt in the driver, SIGINT too where the
    driver was started with it ignored (a background job of a shell script)."""
    def interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


def _stop(jobs, grace_s: float = 20.0) -> None:
    """Cancel running jobs (a local worker gets SIGINT and stops where it is; its last checkpoint stays) and,
    for local workers still alive after `grace_s`, kill them: no worker outlives its driver."""
    jobs = list(jobs)
    for job in jobs:
        with contextlib.suppress(Exception):
            job.cancel(check=False)
    deadline = time.monotonic() + grace_s
    procs = [p for p in (getattr(job, "_process", None) for job in jobs) if p is not None]
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        time.sleep(0.1)
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait()


def collect(specs, store: str | Path) -> list[Record | None]:
    """The record of each spec, in order (None where it is not recorded yet)."""
    return [Record.load(record_path(store, s)) if record_path(store, s).exists() else None for s in specs]


def describe(spec: RunSpec) -> str:
    d, m, o = spec.data, spec.model, spec.optimizer
    model = f"{m.arch} L={m.depth} h={m.hidden}" if m.arch == "revmlp" else f"mlp {m.mlp_hidden}"
    return (f"{d.dataset} N={d.n_train} {model} {o.name} lr={o.lr:g} n={spec.batch_size} "
            f"{spec.epochs} ep seed={spec.seed}/{m.seed}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m revgn.sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("grid", help="module:function returning a revgn.sweep.Grid")
    p.add_argument("--store", help="record folder (default: results/<the grid's topic>)")
    p.add_argument("--list", action="store_true", help="show what is recorded and what is missing, run nothing")
    p.add_argument("--executor", choices=EXECUTORS, default="local")
    p.add_argument("--workers", type=int, default=2, help="runs at a time (local processes, or SLURM array tasks)")
    p.add_argument("--partition", help="SLURM partition (needed with --executor slurm)")
    p.add_argument("--gpus-per-node", type=int, default=0)
    p.add_argument("--timeout-min", type=int, default=60, help="per run")
    p.add_argument("--device", default="cpu", help="cpu or cuda, for every run")
    p.add_argument("--folder", help="submitit's log folder (default: <store>/.submitit)")
    a = p.parse_args(argv)
    grid = load_grid(a.grid, a.store)
    store = Path(a.store) if a.store else grid.store
    if a.store and not (store.is_dir() and any(store.glob("*.json")) or any(store.glob("*.partial"))):
        print(f"note: {store} holds no records or checkpoints of any run (is --store right?)", file=sys.stderr)
    if a.list:
        states = status(grid.specs, store)
        for spec in grid.specs:
            print(f"{spec.key[:12]}  {states[spec.key]:12s}  {describe(spec)}")
        _summary(grid, store)
        return 0
    for round_ in range(1, MAX_ROUNDS + 1):  # a grid that reads its records may ask for more after each round
        counts = _summary(grid, store)
        if sum(n for state, n in counts.items() if _done(state)) == len(grid.specs):
            return 0
        try:
            failures = dispatch(grid.specs, store, executor=a.executor, workers=a.workers, folder=a.folder,
                                device=a.device, partition=a.partition, timeout_min=a.timeout_min,
                                gpus_per_node=a.gpus_per_node)
        except KeyboardInterrupt:
            print(f"{grid.topic}: stopped; its workers were stopped too and their checkpoints kept: run the same "
                  f"command again to resume", file=sys.stderr)
            return 130
        retry = {}
        for key, err in failures.items():
            line, retry[key] = explain(err)
            advice = "interrupted or lost: run again to resume it" if retry[key] else \
                "will fail the same way again: fix the spec or the code (not retried)"
            print(f"FAILED {key[:12]}: {line}\n  -> {advice}", file=sys.stderr)
        if failures:
            n = sum(retry.values())
            print(f"{grid.topic}: {len(failures)} failed ({n} can resume on a rerun, {len(failures) - n} cannot)")
            return 1
        grid = load_grid(a.grid, a.store)
    raise RuntimeError(f"{a.grid} still grows after {MAX_ROUNDS} rounds: does its function converge?")


#: rounds of a growing grid before the sweep gives up (a bracketed grid needs a round per added rate)
MAX_ROUNDS = 20


def _summary(grid: Grid, store: Path) -> dict[str, int]:
    states = list(status(grid.specs, store).values())
    counts = {s: states.count(s) for s in STATES}
    print(f"{grid.topic}: {len(grid.specs)} runs in {store}: "
          + ", ".join(f"{n} {s}" for s, n in counts.items() if n or s in ("recorded", "interrupted", "missing")),
          flush=True)
    return counts

if __name__ == "__main__":
    # run the canonical module's main: grids import revgn.sweep.Grid, which is not this __main__'s Grid class
    sys.exit(importlib.import_module("revgn.sweep").main())
