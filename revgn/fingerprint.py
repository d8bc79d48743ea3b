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
TRAINING_PATH = ("data.py", "models.py", "losses.py", "functional.py", "linearize.py", "gn.py", "gn_reference.py",
                 "damping.py", "kernels.py", "train.py", "runs.py", "utils.py")
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


def source_digests(read: Callable[[str], str | None]) -> dict[str, str]:
    """{module: digest of its `code_tokens`} for each module of TRAINING_PATH that read(name) finds."""
    out = {}
    for name in TRAINING_PATH:
        text = read(name)
        if text is not None:
            out[name] = hashlib.sha256(code_tokens(text).encode()).hexdigest()[:16]
    return out


def combine(sources: dict[str, str], torch_version: str, kernel_settings: str) -> dict:
    """The fingerprint entry of a record: the digests, torch, the kernels, and their joint hash."""
    body = {"sources": dict(sorted(sources.items())), "torch": torch_version, "kernels": kernel_settings}
    return {"fingerprint": hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()[:16], **body}


_CURRENT: dict | None = None


def current() -> dict:
    """The fingerprint of the code running now (computed once per process: runs started later in the same
    process run the same imported code)."""
    global _CURRENT
    if _CURRENT is None:
        import torch

        here = Path(__file__).resolve().parent
        _CURRENT = combine(source_digests(lambda n: (here / n).read_text() if (here / n).exists() else None),
                           torch.__version__, kernels())
    return _CURRENT


def at_commit(commit: str, torch_version: str, kernel_settings: str, repo: Path = REPO_ROOT) -> dict | None:
    """The fingerprint code at `commit` had (None for an unknown commit), with the torch and kernels a record
    names: what a record made there, from a clean tree, was computed by."""
    def read(name: str) -> str | None:
        out = subprocess.run(["git", "show", f"{commit}:revgn/{name}"], cwd=repo, capture_output=True, text=True)
        return out.stdout if out.returncode == 0 else None

    known = subprocess.run(["git", "cat-file", "-e", f"{commit}^{{commit}}"], cwd=repo, capture_output=True)
    return combine(source_digests(read), torch_version, kernel_settings) if known.returncode == 0 else None


#: Fingerprints shown to compute the same numbers: classes of fingerprints, each with its evidence (records
#: recomputed bit-identically by a later fingerprint, `verify`). A code change that keeps the numbers (a
#: refactor, a new option off by default) joins the class of the code before it once a sample agrees.
EQUIVALENCES = REPO_ROOT / "results" / "fingerprints.json"


def _classes(path: Path | None = None) -> list[dict]:
    path = EQUIVALENCES if path is None else path
    if not path.exists():
        return []
    d = read_json(path, "fingerprint equivalences", "restore it with git")
    if not (isinstance(d, dict) and isinstance(d.get("classes"), list)):
        raise ValueError(f"{path} is not a list of fingerprint classes ({{'classes': [...]}}); restore it with git")
    return d["classes"]


def same_numbers(a: str, b: str, classes: list[dict] | None = None) -> bool:
    """Are fingerprints a and b the same code, or shown (`verify`) to compute the same numbers?"""
    return a == b or any(a in c["members"] and b in c["members"] for c in (_classes() if classes is None else classes))


def changes(recorded: dict | None, now: dict | None = None) -> list[str]:
    """Why a record's fingerprint is not the running code's: [] when it is (or was shown to compute the same
    numbers, `same_numbers`); else e.g. ["train.py changed", "torch 2.13.0, now 2.14.0"]; a record without one:
    ["no fingerprint (code unknown)"]."""
    now = now or current()
    if not recorded or "fingerprint" not in recorded:
        return ["no fingerprint (code unknown)"]
    if same_numbers(recorded["fingerprint"], now["fingerprint"]):
        return []
    old, new = recorded.get("sources", {}), now["sources"]
    out = [f"{m} changed" for m in sorted(set(old) | set(new)) if old.get(m) != new.get(m)]
    out += [f"{k} {recorded.get(k)}, now {now[k]}" for k in ("torch", "kernels") if recorded.get(k) != now[k]]
    return out or ["fingerprint differs"]


def backfill(folder: Path, repo: Path = REPO_ROOT) -> dict[str, int]:
    """Give each record under `folder` that has none the fingerprint of its own commit, if that tree was clean
    (its provenance names a commit without "+dirty"); records from dirty trees are left as they are (their
    code is unknown). Rewrites records atomically; their keys do not change. Returns counts."""
    counts = {"had one": 0, "filled": 0, "dirty tree": 0, "unknown commit": 0}
    cache: dict[tuple, dict | None] = {}
    for path in sorted(Path(folder).rglob("*.json")):
        d = read_json(path, "run record")
        if not (isinstance(d, dict) and "provenance" in d and "spec" in d):
            continue  # not a run record (a benchmark or flow file)
        prov = d["provenance"]
        if "fingerprint" in prov:
            counts["had one"] += 1
            continue
        commit = prov.get("commit", "unknown")
        if commit.endswith("+dirty"):
            counts["dirty tree"] += 1
            continue
        key = (commit, prov.get("torch", "?"), prov.get("kernels", "?"))
        if key not in cache:
            cache[key] = None if commit == "unknown" else at_commit(*key, repo=repo)
        if cache[key] is None:
            counts["unknown commit"] += 1
            continue
        d["provenance"] = {**prov, "fingerprint": cache[key], "fingerprint_from": "its commit (backfilled)"}
        atomic_write_json(path, d)
        counts["filled"] += 1
    return counts


def _cost(rec) -> float:
    """A rough relative cost of recomputing a record: examples x epochs x width x depth (x 100 for x_L's
    Moore-Penrose step, some 700 CG iterations a step); a 2,000-image, h = 512, 6-epoch run is 1."""
    s = rec.spec
    n = s.data.n_train or 60000
    width = s.model.hidden if s.model.arch == "revmlp" else sum(s.model.mlp_hidden)
    slow = 100 if s.optimizer.name == "gn-mp" and s.optimizer.output == "body" else 1
    return s.epochs * n * width * s.model.depth * slow / (2000 * 6 * 512 * 2)


def _reproduces(recorded, again) -> bool:
    """Does a recomputed history hold every recorded number, bit for bit? (It may log more: a quantity the
    code has learnt to record since, such as a step's norm, is not a change of the numbers.)"""
    fresh = json.loads(json.dumps({"steps": again.steps, "epochs": again.epochs}))
    return all(fresh[part].get(k) == v for part, table in (("steps", recorded.steps), ("epochs", recorded.epochs))
               for k, v in table.items())


def verify(folders, sample: int = 2, max_cost: float = 10.0, path: Path | None = None, log=print,
           only: set[str] | None = None) -> dict[str, str]:
    """Recompute, with the running code, the `sample` cheapest finished records of each other fingerprint found
    in `folders` (on their recorded thread count, so reductions run in the same order; a fingerprint whose
    cheapest record costs more than `max_cost` (`_cost`) is left unverified), and compare their
    histories number for number. Where every one agrees bit for bit, that fingerprint joins the running
    code's class in EQUIVALENCES (with the keys as evidence): its records are no longer stale. Returns
    {fingerprint: "same numbers (k records)" or what differed}. `only`: verify just these fingerprints (say,
    the class the previous code belonged to, skipping fingerprints already known to differ)."""
    import torch

    from .runs import Record, run

    path = EQUIVALENCES if path is None else path
    now = current()["fingerprint"]
    classes = _classes(path)
    groups: dict[str, list] = {}
    for folder in folders:
        for p in sorted(Path(folder).rglob("*.json")):
            try:
                rec = Record.load(p)
            except ValueError:
                continue  # not a run record
            fp = (rec.fingerprint or {}).get("fingerprint", "unknown code")
            if rec.ok and not same_numbers(fp, now, classes) and (only is None or fp in only):
                groups.setdefault(fp, []).append(rec)
    out = {}
    threads = torch.get_num_threads()
    for fp, recs in groups.items():
        chosen, agree = [r for r in sorted(recs, key=_cost)[:sample] if _cost(r) <= max_cost], True
        if not chosen:
            out[fp] = f"not verified: its cheapest record costs {_cost(min(recs, key=_cost)):.0f} > {max_cost:g}"
            continue
        for rec in chosen:
            torch.set_num_threads(int(rec.provenance.get("threads", threads)))
            try:
                again = run(rec.spec)
            finally:
                torch.set_num_threads(threads)
            same = _reproduces(rec.history, again.history)
            log(f"{fp} {rec.spec.key[:12]}: {'bit-identical' if same else 'DIFFERS'}")
            agree &= same
        if fp == "unknown code":  # from trees with uncommitted changes: a sample is evidence, not a fingerprint
            out[fp] = (f"{len(chosen)} of {len(recs)} records from dirty trees recomputed: "
                       + ("the same numbers" if agree else "they differ") + " (they stay of unknown code)")
            continue
        if not agree:
            out[fp] = f"differs: its records are stale ({len(recs)} records)"
            continue
        merged = [c for c in classes if fp in c["members"] or now in c["members"]]
        members = sorted({fp, now, *(m for c in merged for m in c["members"])})
        evidence = [e for c in merged for e in c.get("evidence", [])] + \
                   [{"recomputed": [r.spec.key for r in chosen], "old": fp, "new": now}]
        classes = [c for c in classes if c not in merged] + [{"members": members, "evidence": evidence}]
        atomic_write_json(path, {"classes": classes})
        out[fp] = f"same numbers ({len(chosen)} of {len(recs)} records recomputed)"
    return out


def main(argv=None) -> int:
    import argparse

    p = argparse.ArgumentParser(prog="python -m revgn.fingerprint", description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("show", help="the running code's fingerprint")
    b = sub.add_parser("backfill", help="give records without one the fingerprint of their (clean) commit")
    b.add_argument("folder")
    v = sub.add_parser("verify", help="recompute a sample of each other fingerprint's records; record agreement")
    v.add_argument("folders", nargs="+")
    v.add_argument("--sample", type=int, default=2)
    v.add_argument("--max-cost", type=float, default=10.0, help="skip fingerprints whose cheapest record costs more")
    v.add_argument("--only", nargs="+", help="verify just these fingerprints")
    a = p.parse_args(argv)
    if a.command == "show":
        print(json.dumps(current(), indent=1))
    elif a.command == "backfill":
        print(backfill(Path(a.folder)))
    else:
        for fp, verdict in verify(a.folders, a.sample, a.max_cost, only=set(a.only) if a.only else None).items():
            print(f"{fp}: {verdict}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
