"""What decides a run's numbers besides its spec: the training path's source code, torch, the CPU kernels.

A record's key is its spec's hash (`revgn.runs`), so the key alone cannot tell that the code which computed a
record has changed since. Every record and checkpoint therefore carries a *fingerprint*:

    {"fingerprint": "3f9c...", "sources": {"train.py": "a81e...", ...}, "torch": "2.13.0", "kernels": "aten avx2, ..."}

`sources` holds one digest per module of `TRAINING_PATH`, taken over its Python tokens without comments,
blank lines or docstrings (so prose edits change nothing, any code edit does); `fingerprint` hashes them with
torch's version and the kernel settings (`revgn.utils.kernels`). A record whose fingerprint differs from the
running code's is *stale* (`changes` says why: which modules, torch, the kernels); one without a fingerprint
is of unknown code. Records made before fingerprints existed get theirs from their own commit
(`python -m revgn.fingerprint backfill results/`), where that commit's tree was clean.

A *measurement* (`revgn.records.Measurement`, say chapter 08's flow comparison) is computed by a function
outside the training path, named in its provenance as `measured_by` ("revgn.experiments.right_inverse:
measure_flow"); its fingerprint digests that function's module too (`current(also=...)`), so an edit there
makes it stale as well.
"""
from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tokenize
from pathlib import Path
from typing import Callable

from .utils import REPO_ROOT, atomic_write_json, kernels, read_json

#: the modules a training run executes: a change to any of them may change the numbers of a recorded run
TRAINING_PATH = ("data.py", "models.py", "losses.py", "functional.py", "linearize.py", "gn.py", "pinv.py",
                 "block_kernel.py", "curvature.py", "solvers.py", "damping.py", "kernels.py", "optimizers.py",
                 "gn_optimizers.py", "history.py", "checkpoint.py", "train.py", "spec.py", "records.py", "runs.py",
                 "utils.py")
_SKIP = {tokenize.COMMENT, tokenize.NL, tokenize.ENCODING, tokenize.ENDMARKER}


def code_tokens(source: str) -> str:
    """A module's code as its tokens, one space apart: without comments, blank lines and docstrings (a string
    that is a statement of its own), so only a change of code changes it."""
    toks = [t for t in tokenize.generate_tokens(io.StringIO(source).readline) if t.type not in _SKIP]
    out, skip = [], False
    for i, t in enumerate(toks):
        before = toks[i - 1].type if i else tokenize.NEWLINE
        after = toks[i + 1].type if i + 1 < len(toks) else tokenize.NEWLINE
        if skip:  # the NEWLINE that ended a dropped docstring
            skip = False
            continue
        if t.type == tokenize.STRING and before in (tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT) \
                and after == tokenize.NEWLINE:
            skip = True
            continue  # a docstring, or any bare string statement: no effect on the numbers
        out.append(t.string if t.type != tokenize.INDENT else "<indent>")
    return " ".join(out)


def source_digests(read: Callable[[str], str | None], names: tuple[str, ...] = TRAINING_PATH) -> dict[str, str]:
    """{module: digest of its `code_tokens`} for each module of `names` (paths under revgn/) that read(name)
    finds."""
    out = {}
    for name in names:
        text = read(name)
        if text is not None:
            out[name] = hashlib.sha256(code_tokens(text).encode()).hexdigest()[:16]
    return out


def combine(sources: dict[str, str], torch_version: str, kernel_settings: str) -> dict:
    """The fingerprint entry of a record: the digests, torch, the kernels, and their joint hash."""
    body = {"sources": dict(sorted(sources.items())), "torch": torch_version, "kernels": kernel_settings}
    return {"fingerprint": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16], **body}


_CURRENT: dict | None = None


def _read_here(name: str) -> str | None:
    path = Path(__file__).resolve().parent / name
    return path.read_text() if path.exists() else None


def current(also: tuple[str, ...] = ()) -> dict:
    """The fingerprint of the code running now (the training path's part computed once per process: runs
    started later in the same process run the same imported code); with `also` (modules under revgn/, as
    `module_of` names them), the fingerprint of a measurement computed there."""
    global _CURRENT
    if _CURRENT is None:
        import torch

        _CURRENT = combine(source_digests(_read_here), torch.__version__, kernels())
    if not also:
        return _CURRENT
    return combine({**_CURRENT["sources"], **source_digests(_read_here, tuple(also))}, _CURRENT["torch"],
                   _CURRENT["kernels"])


def module_of(measured_by: str) -> str:
    """The file under revgn/ of a measuring function named "revgn.<module>:<function>" (a measurement's
    `measured_by`): "revgn.experiments.right_inverse:measure_flow" -> "experiments/right_inverse.py"."""
    module, _, function = str(measured_by).partition(":")
    parts = module.split(".")
    if parts[0] != "revgn" or len(parts) < 2 or not function.isidentifier():
        raise ValueError(f"measured_by must name a function of revgn as 'revgn.<module>:<function>', got "
                         f"{measured_by!r}")
    path = "/".join(parts[1:]) + ".py"
    if _read_here(path) is None:
        raise ValueError(f"measured_by={measured_by!r}: revgn has no module {path}")
    return path


def _also(recorded: dict) -> tuple[str, ...]:
    """The modules beyond the training path that a recorded fingerprint digests (a measurement's own)."""
    return tuple(sorted(set(recorded.get("sources", {})) - set(TRAINING_PATH)))


def at_commit(commit: str, torch_version: str, kernel_settings: str, repo: Path = REPO_ROOT,
              also: tuple[str, ...] = ()) -> dict | None:
    """The fingerprint code at `commit` had (None for an unknown commit), with the torch and kernels a record
    names: what a record made there, from a clean tree, was computed by (with `also`, as in `current`)."""
    def read(name: str) -> str | None:
        out = subprocess.run(["git", "show", f"{commit}:revgn/{name}"], cwd=repo, capture_output=True, text=True)
        return out.stdout if out.returncode == 0 else None

    known = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=repo, capture_output=True)
    return combine(source_digests(read, TRAINING_PATH + tuple(also)), torch_version, kernel_settings) \
        if known.returncode == 0 else None


#: Fingerprints shown to compute the same numbers: classes of fingerprints, each with its evidence (records
#: recomputed bit-identically by a later fingerprint, `verify`). A code change that keeps the numbers (a
#: refactor, a new option off by default) joins the class of the code before it once a sample agrees.
EQUIVALENCES = REPO_ROOT / "results" / "fingerprints.json"


def equivalence_classes(path: Path | None = None) -> list[dict]:
    path = EQUIVALENCES if path is None else path
    if not path.exists():
        return []
    d = read_json(path, "fingerprint equivalences", "restore it with git")
    if not (isinstance(d, dict) and isinstance(d.get("classes"), list)):
        raise ValueError(f"{path} is not a list of fingerprint classes ({{'classes': [...]}}); restore it with git")
    return d["classes"]


def known_differences(path: Path | None = None) -> list[dict]:
    """The fingerprints shown (`revgn.recompute.verify`) to compute other numbers than a later code: entries
    {"old", "new", "recomputed" (keys), "largest_relative", "from_step", "final", and where and when}."""
    path = EQUIVALENCES if path is None else path
    if not path.exists():
        return []
    d = read_json(path, "fingerprint equivalences", "restore it with git")
    differs = d.get("differs", []) if isinstance(d, dict) else None
    if not (isinstance(differs, list) and all(isinstance(e, dict) and {"old", "new"} <= set(e) for e in differs)):
        raise ValueError(f"{path}: 'differs' is not a list of {{'old', 'new', ...}} entries; restore it with git")
    return differs


def known_to_differ(a: str, b: str, classes: list[dict] | None = None, differs: list[dict] | None = None
                    ) -> dict | None:
    """The recorded evidence that fingerprint a computes other numbers than b (or than code shown to compute
    b's numbers), or None where none is recorded."""
    classes = equivalence_classes() if classes is None else classes
    return next((e for e in (known_differences() if differs is None else differs)
                 if e["old"] == a and same_numbers(e["new"], b, classes)), None)


def same_numbers(a: str, b: str, classes: list[dict] | None = None) -> bool:
    """Are fingerprints a and b the same code, or shown (`verify`) to compute the same numbers?"""
    return a == b or any(a in c["members"] and b in c["members"] for c in (equivalence_classes() if classes is None else classes))


def changes(recorded: dict | None, now: dict | None = None) -> list[str]:
    """Why a record's fingerprint is not the running code's: [] when it is (or was shown to compute the same
    numbers, `same_numbers`); else e.g. ["train.py changed", "torch 2.13.0, now 2.14.0"]; a record without one:
    ["no fingerprint (code unknown)"]."""
    if not recorded or "fingerprint" not in recorded:
        return ["no fingerprint (code unknown)"]
    now = now or current(_also(recorded))
    if same_numbers(recorded["fingerprint"], now["fingerprint"]):
        return []
    old, new = recorded.get("sources", {}), now["sources"]
    out = [f"{m} changed" for m in sorted(set(old) | set(new)) if old.get(m) != new.get(m)]
    out += [f"{k} {recorded.get(k)}, now {now[k]}" for k in ("torch", "kernels") if recorded.get(k) != now[k]]
    return out or ["fingerprint differs"]


def backfill(folder: Path, repo: Path = REPO_ROOT, measured_by: dict[str, str] | None = None) -> dict[str, int]:
    """Give each record under `folder` that has none the fingerprint of its own commit, if that tree was clean
    (its provenance names a commit without "+dirty"); records from dirty trees are left as they are (their
    code is unknown). A measurement's fingerprint digests its measuring function's module too: the one its
    provenance names, else `measured_by[kind]` (written into its provenance); one of a kind not named is left
    as it is ("measurer unknown"). Rewrites records atomically; their keys do not change. Returns counts."""
    for name in (measured_by or {}).values():
        module_of(name)  # a malformed name is an error before any record is touched
    counts = {"had one": 0, "filled": 0, "dirty tree": 0, "unknown commit": 0, "measurer unknown": 0}
    cache: dict[tuple, dict | None] = {}
    for path in sorted(Path(folder).rglob("*.json")):
        d = read_json(path, "record")
        if not (isinstance(d, dict) and "provenance" in d and ("spec" in d or {"kind", "setting"} <= set(d))):
            continue  # neither a run record nor a measurement (a benchmark file)
        prov = d["provenance"]
        if "fingerprint" in prov:
            counts["had one"] += 1
            continue
        commit = prov.get("commit", "unknown")
        if commit.endswith("+dirty"):
            counts["dirty tree"] += 1
            continue
        measurer = prov.get("measured_by") or (measured_by or {}).get(d.get("kind"))
        if "spec" not in d and not measurer:
            counts["measurer unknown"] += 1
            continue
        also = (module_of(measurer),) if "spec" not in d else ()
        key = (commit, prov.get("torch", "?"), prov.get("kernels", "?"), also)
        if key not in cache:
            cache[key] = None if commit == "unknown" else at_commit(*key[:3], repo=repo, also=also)
        if cache[key] is None:
            counts["unknown commit"] += 1
            continue
        d["provenance"] = {**prov, **({"measured_by": measurer} if also else {}), "fingerprint": cache[key],
                           "fingerprint_from": "its commit (backfilled)"}
        atomic_write_json(path, d)
        counts["filled"] += 1
    return counts


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m revgn.fingerprint", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("show", help="the running code's fingerprint")
    b = sub.add_parser("backfill", help="give records without one the fingerprint of their (clean) commit")
    b.add_argument("folder")
    b.add_argument("--measured-by", nargs="+", default=[], metavar="KIND=revgn.MODULE:FUNCTION",
                   help="the function that computed measurements of KIND, for those whose provenance names none")
    a = p.parse_args(argv)
    if a.command == "show":
        print(json.dumps(current(), indent=1))
        return 0
    pairs = [m.partition("=") for m in a.measured_by]
    if any(not k or not eq or not v for k, eq, v in pairs):
        p.error(f"--measured-by takes KIND=revgn.MODULE:FUNCTION, got {a.measured_by}")
    print(backfill(Path(a.folder), measured_by={k: v for k, _, v in pairs}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
