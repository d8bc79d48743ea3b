"""The book's chapters are wired up as the pipeline expects.

These checks are cheap; nbval (run by `make test`) re-executes the chapters and compares their outputs.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOC = (ROOT / "_toc.yml").read_text()
CHAPTERS = sorted((ROOT / "chapters").glob("[0-9]*.py"))


def cells_of_py(path: Path) -> list[dict]:
    import jupytext

    return jupytext.read(path)["cells"]


def test_every_chapter_is_in_the_toc_once():
    assert CHAPTERS, "no chapters found"
    for py in CHAPTERS:
        assert len(re.findall(rf"\bchapters/{py.stem}\b", TOC)) == 1, f"{py.name} must appear once in _toc.yml"


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_has_a_parameters_cell_with_scale_device_seed(py):
    params = [c for c in cells_of_py(py) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(params) == 1, "exactly one cell tagged 'parameters'"
    src = params[0]["source"]
    for name in ("scale", "device", "seed"):
        assert re.search(rf"^{name}\s*=", src, re.M), f"parameters cell lacks {name!r}"
    assert re.search(r'^scale\s*=\s*"book"', src, re.M), "the default scale is 'book'"


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.stem)
def test_stored_notebook_is_executed_from_the_current_source_without_errors(py):
    nb_path = py.with_suffix(".ipynb")
    assert nb_path.exists(), f"{nb_path.name} is missing: run `make book`"
    nb = json.loads(nb_path.read_text())
    code = [c for c in nb["cells"] if c["cell_type"] == "code"
            and "injected-parameters" not in c.get("metadata", {}).get("tags", [])]
    src_code = [c["source"] for c in cells_of_py(py) if c["cell_type"] == "code"]
    stored = ["".join(c["source"]) for c in code]
    assert stored == src_code, f"{nb_path.name} was not executed from the current {py.name}: run `make book`"
    # The prose too: the book renders the notebook's Markdown, so an edit to the source's text must reach it.
    stored_md = ["".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "markdown"]
    src_md = [c["source"] for c in cells_of_py(py) if c["cell_type"] == "markdown"]
    assert stored_md == src_md, f"{nb_path.name} has other Markdown than {py.name}: run `make sync` or `make book`"
    for c in code:
        assert c.get("execution_count") is not None, f"{nb_path.name} has unexecuted cells: run `make book`"
        for out in c.get("outputs", []):
            assert out["output_type"] != "error", f"{nb_path.name} stores an error: {out.get('ename')}"
    assert "revgn" in "".join(stored), "every chapter uses the library"


# A result-like number in prose: a three-decimal fraction (an accuracy, a CKA) or a signed one-decimal number
# (a gap in points). Settings (h=512, 6 epochs) and the papers' own values are not of this form.
RESULT_LIKE = re.compile(r"(?<![\w.])(0\.\d{3}|[+\u2212-]\d+\.\d\b)")


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.stem)
def test_no_result_is_typed_into_a_chapters_markdown(py):
    """Numbers and verdicts come from code reading records (revgn.book.markdown), never typed into prose."""
    typed = [m.group(0) for c in cells_of_py(py) if c["cell_type"] == "markdown"
             for m in RESULT_LIKE.finditer(c["source"])]
    assert not typed, f"{py.name} types result-like numbers into its Markdown: {typed}; render them from records"


#: the chapters' code is formatted by black (pinned in requirements.txt) at this width, strings split too
LINE_LENGTH = 88


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.stem)
def test_chapter_code_fits_the_page(py):
    """A reader never scrolls a code cell sideways: no code line is longer than LINE_LENGTH."""
    long = [line for c in cells_of_py(py) if c["cell_type"] == "code"
            for line in c["source"].splitlines() if len(line) > LINE_LENGTH]
    assert not long, f"{py.name} has {len(long)} code lines over {LINE_LENGTH} columns, e.g. {long[0]!r}"


def test_chapter_code_is_formatted():
    black = pytest.importorskip("black")
    mode = black.Mode(line_length=LINE_LENGTH, preview=True, unstable=True)
    unformatted = []
    for py in CHAPTERS:
        src = py.read_text()
        try:
            black.format_file_contents(src, fast=False, mode=mode)
            unformatted.append(py.name)  # it would change the file
        except black.NothingChanged:
            pass
    assert not unformatted, (f"not black-formatted: {unformatted}; run "
                             f"`.venv/bin/black --unstable -l {LINE_LENGTH} chapters/[0-9]*.py`")


@pytest.mark.parametrize("py", CHAPTERS, ids=lambda p: p.stem)
def test_every_figure_is_numbered_captioned_and_referenced(py):
    """A cell that draws a figure carries myst-nb's figure metadata (a name, so Sphinx numbers it, and a
    caption), and the chapter's prose refers to it by that name."""
    cells = cells_of_py(py)
    prose = "\n".join(c["source"] for c in cells if c["cell_type"] == "markdown")
    for c in cells:
        if c["cell_type"] != "code" or "plt.show()" not in c["source"]:
            continue
        fig = c.get("metadata", {}).get("mystnb", {}).get("figure", {})
        first = c["source"].splitlines()[0]
        assert fig.get("name", "").startswith("fig-"), f"{py.name}: the figure of {first!r} has no name"
        assert len(fig.get("caption", "")) > 40, f"{py.name}: the figure of {first!r} has no real caption"
        assert f"{{numref}}`{fig['name']}`" in prose, f"{py.name}: no sentence refers to {fig['name']}"
