"""The built book as a reader sees it: every page of `_build/html` opened in headless Chromium, offline.

`jupyter-book build -W` proves that Sphinx was content, not that the pages show what they should. Here each
page is loaded from `file://` with every non-file request refused (so a page that needs a CDN fails, as it
would on a cluster node or from an archived copy), MathJax is awaited, and the test asserts:

- no request left the machine (the book ships its own MathJax, see `_config.yml`);
- every math element was typeset by MathJax, none with a TeX error, and no raw TeX delimiters
  (\\( \\) \\[ \\] $$ \\begin) remain in the visible text outside code;
- no raw Markdown or TeX is left in the visible text outside code: a pipe table's rule `|---`, `**`
  emphasis, a `$...$` pair or a backslash command such as `\\frac` (the symptom of Markdown outputs parsed as
  commonmark instead of MyST), and a paragraph of table rows is not a table;
- no display equation is wider than its box unless that box scrolls (a clipped formula);
- every <img> loaded (natural width > 0);
- every internal link, equation reference and citation points at an anchor that exists;
- no JavaScript error was raised or logged.

A full-page screenshot of each page is saved under `_build/screenshots/` for a person to look at.

Run by `make html` (so by `make book`) and by `make test`, after the HTML is built. Needs Chromium
(Debian: `apt-get install chromium`; `.ci/run` installs it) and the `playwright` package; without Chromium
the tests are skipped with a message saying so. `REVGN_CHROMIUM` names another Chromium binary, and
`REVGN_BOOK_HTML` another built book (screenshots then go beside it).
"""
from __future__ import annotations

import os
import shutil
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

ROOT = Path(__file__).resolve().parents[1]
HTML = Path(os.environ.get("REVGN_BOOK_HTML", ROOT / "_build" / "html")).resolve()  # another build can be checked
SCREENSHOTS = HTML.parent / "screenshots"
PAGES = sorted(p.relative_to(HTML).as_posix() for p in [*HTML.glob("*.html"), *HTML.glob("chapters/*.html")])
TEX_DELIMITERS = ("\\(", "\\)", "\\[", "\\]", "$$", "\\begin{")
#: raw Markdown or TeX in visible text: (what it is, a JavaScript regular expression)
RAW_MARKUP = (("a pipe table's rule", r"\|\s*:?-{3,}"), ("a table row as text", r"^\s*\|.*\|.*\|\s*$"),
              ("** emphasis", r"\*\*\S"), ("a $...$ pair", r"\$[^$\s][^$]*\$"),
              ("a TeX command", r"\\[a-zA-Z]{2,}\b"))
FIXTURE = Path(__file__).with_name("fixtures") / "broken_page.html"
MATHJAX_TIMEOUT_MS = 20_000  # MathJax typesets a chapter from disk in about a second

# Runs in the page once it has loaded and MathJax (if the page has math) has finished typesetting.
INSPECT_JS = r"""
async ([delims, markup]) => {
  const out = {ids: [...document.querySelectorAll('[id]')].map(e => e.id), names: []};
  document.querySelectorAll('a[name]').forEach(a => out.ids.push(a.name));
  const maths = [...document.querySelectorAll('.math')];
  out.math = maths.length;
  out.untypeset = maths.filter(m => !m.querySelector('mjx-container')).map(m => m.textContent.slice(0, 80));
  out.tex_errors = [...document.querySelectorAll('mjx-merror')].map(e => e.textContent.slice(0, 80));
  // Visible text outside code and outside MathJax's hidden copy of each formula.
  const skip = 'pre, code, script, style, mjx-assistive-mml, .highlight, textarea, .sig';  // .sig: API signatures
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  out.raw_tex = [];
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!el || el.closest(skip) || !el.checkVisibility()) continue;
    const hit = delims.find(d => node.textContent.includes(d));
    if (hit) out.raw_tex.push(`${hit} in: ${node.textContent.trim().slice(0, 80)}`);
  }
  // Raw Markdown or TeX: judged on each visible block's text (a table row spans several text nodes).
  out.raw_markup = [];
  const blocks = [...document.querySelectorAll('p, li, td, th, dd, dt, h1, h2, h3, h4, figcaption, caption')];
  for (const el of blocks) {
    if (el.closest(skip) || !el.checkVisibility()) continue;
    const copy = el.cloneNode(true);  // its text without typeset formulas (MathJax's copy holds TeX-like text)
    copy.querySelectorAll('mjx-container, .math, ' + skip).forEach(e => e.remove());
    const lines = copy.textContent.split('\n');
    for (const [what, re] of markup) {  // each kind once per block, with the first line that shows it
      const line = lines.find(l => new RegExp(re).test(l));
      if (line !== undefined) out.raw_markup.push(`${what} in: ${line.trim().slice(0, 80)}`);
    }
  }
  // Display equations wider than their box, with no scrolling box between them and the page.
  out.clipped_math = [];
  for (const c of document.querySelectorAll('mjx-container[display="true"]')) {
    const math = c.querySelector('mjx-math') || c;
    const width = math.getBoundingClientRect().width;
    let scrolls = false, box = c.parentElement;
    for (let e = c; e && e !== document.body; e = e.parentElement) {
      const ox = getComputedStyle(e).overflowX;
      if (ox === 'auto' || ox === 'scroll') { scrolls = true; break; }
    }
    if (!scrolls && box && width > box.clientWidth + 1)
      out.clipped_math.push(`${Math.round(width)} px in a ${box.clientWidth} px box: ` +
                            (c.textContent || '').slice(0, 60));
  }
  // Images: bring each into view (lazy loading) and wait for it to decode.
  out.broken_images = [];
  for (const img of document.images) {
    img.loading = 'eager';
    img.scrollIntoView();
    try { await img.decode(); } catch (e) { /* judged by naturalWidth below */ }
    if (!(img.complete && img.naturalWidth > 0)) out.broken_images.push(img.getAttribute('src'));
  }
  // Output figures: shown at (nearly) their own size, so their 9 pt text stays 9 pt; numbered, with a caption.
  out.shrunk_figures = [];
  out.uncaptioned_figures = [];
  for (const img of document.querySelectorAll('.cell_output img, .output img')) {
    if (img.naturalWidth > 1.05 * img.clientWidth)
      out.shrunk_figures.push(`${img.naturalWidth} px shown at ${img.clientWidth} px: ${img.getAttribute('src')}`);
    const fig = img.closest('figure');
    if (!(fig && fig.querySelector('figcaption') && fig.querySelector('.caption-number')))
      out.uncaptioned_figures.push(img.getAttribute('src'));
  }
  window.scrollTo(0, 0);
  out.links = [...document.querySelectorAll('a.reference.internal[href], a.headerlink[href]')].map(a => ({
    href: a.getAttribute('href'), text: a.textContent.trim(),
    kind: a.classList.contains('headerlink') ? 'permalink' :
          a.getAttribute('href').includes('#equation-') ? 'equation' :
          a.getAttribute('href').includes('references.html#') ? 'citation' : 'link'}));
  return out;
}
"""


def _chromium() -> str | None:
    return os.environ.get("REVGN_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report() -> dict[str, dict]:
    """Visit every page once; what each showed (see INSPECT_JS), plus its refused requests and JS errors."""
    if not (HTML / "index.html").exists():
        pytest.fail(f"{HTML / 'index.html'} is missing: build the book first (`make html`)")
    exe = _chromium()
    if exe is None:
        pytest.skip("the browser check needs Chromium: `apt-get install chromium` (Debian) or set REVGN_CHROMIUM "
                    "to a Chromium binary; `.ci/run` installs it")
    sync_api = pytest.importorskip("playwright.sync_api", reason="the browser check needs `pip install playwright`")
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    out = {}
    with sync_api.sync_playwright() as pw:
        # The flags keep Chromium from calling home, which a closed network answers with refused connections.
        browser = pw.chromium.launch(executable_path=exe, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--allow-file-access-from-files"])
        context = browser.new_context(viewport={"width": 1280, "height": 900}, java_script_enabled=True)
        refused: list[str] = []

        def only_files(route):
            if route.request.url.startswith(("file:", "data:", "blob:", "about:")):
                route.continue_()
            else:  # offline: the page may not depend on the network
                refused.append(route.request.url)
                route.abort()

        context.route("**/*", only_files)
        for rel in PAGES:
            out[rel] = _visit(context, HTML / rel, refused, sync_api)
            out[rel]["screenshot"] = SCREENSHOTS / (rel.replace("/", "__").removesuffix(".html") + ".png")
            out[rel]["shot"](out[rel]["screenshot"])
        out[FIXTURE.name] = _visit(context, FIXTURE, refused, sync_api)
        browser.close()
    return out


def _visit(context, path: Path, refused: list[str], sync_api) -> dict:
    """Open one file in a new page; what it showed (INSPECT_JS), its refused requests and JS errors, and a
    function that saves its full-page screenshot (taken before the page is closed)."""
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(f"uncaught: {exc}"))
    page.on("console", lambda msg: errors.append(f"console: {msg.text}") if msg.type == "error" else None)
    refused.clear()
    page.goto(path.as_uri(), wait_until="load")
    page.wait_for_load_state("networkidle")
    has_math = page.evaluate("() => document.querySelector('.math') !== null")
    mathjax = "not needed"
    if has_math:
        try:
            page.wait_for_function("() => window.MathJax && MathJax.startup && MathJax.startup.promise",
                                   timeout=MATHJAX_TIMEOUT_MS)
            page.evaluate("() => MathJax.startup.promise.then(() => true)")
            mathjax = "typeset"
        except sync_api.Error as exc:
            mathjax = f"MathJax never started ({type(exc).__name__})"
    seen = page.evaluate(INSPECT_JS, [list(TEX_DELIMITERS), [list(m) for m in RAW_MARKUP]])
    shot_png, url = page.screenshot(full_page=True), page.url
    page.close()
    return {**seen, "mathjax": mathjax, "refused": list(refused), "errors": errors, "url": url,
            "screenshot": None, "shot": lambda where: Path(where).write_bytes(shot_png)}


#: what a page may not show: (key of the page's report, how to say it, how many examples)
FAULTS = (("refused", "requested the network (offline, refused)", 5),
          ("untypeset", "math elements not typeset", 3), ("tex_errors", "TeX errors", 3),
          ("raw_tex", "raw TeX in the visible text", 3), ("raw_markup", "raw Markdown or TeX in the visible text", 8),
          ("clipped_math", "display equations clipped (wider than their box, no scroll)", 3),
          ("broken_images", "images that did not load", 5), ("errors", "JavaScript errors", 5),
          ("shrunk_figures", "figures scaled below 95% of their size (text shrinks with them)", 3),
          ("uncaptioned_figures", "output figures without a number and a caption", 3))


def problems(r: dict) -> list[str]:
    """What is wrong with one visited page (empty: nothing)."""
    out = [f"{r['math']} math elements, but {r['mathjax']}"] if r["math"] and r["mathjax"] != "typeset" else []
    return out + [f"{what} ({len(r[key])}): {r[key][:most]}" for key, what, most in FAULTS if r[key]]


def _resolve(page_url: str, href: str) -> tuple[Path, str]:
    """The file and fragment an href on the page at page_url points to."""
    base = Path(unquote(urlsplit(page_url).path))
    parts = urlsplit(href)
    target = base if not parts.path else (base.parent / unquote(parts.path)).resolve()
    return target, unquote(parts.fragment)


@pytest.mark.parametrize("page", PAGES)
def test_page_renders_offline(report, page):
    r = report[page]
    found = problems(r)
    assert not found, f"{page} (screenshot {r['screenshot']}):\n  " + "\n  ".join(found)


def test_the_check_catches_a_broken_page(report):
    """The fixture page holds each fault the check must catch (as commonmark-rendered outputs showed them):
    each is reported, so a check that stopped looking would fail here."""
    found = "\n".join(problems(report[FIXTURE.name]))
    for what, _ in RAW_MARKUP:
        assert what in found, f"the browser check missed {what} on {FIXTURE}:\n{found}"
    assert "display equations clipped" in found, found
    assert "figures scaled below" in found and "without a number and a caption" in found, found


@pytest.mark.parametrize("page", PAGES)
def test_every_reference_resolves(report, page):
    """Internal links, equation references and citations all land on an existing anchor of an existing page."""
    r = report[page]
    ids_by_file = {Path(unquote(urlsplit(v["url"]).path)).resolve(): set(v["ids"]) for v in report.values()}
    bad = []
    for link in r["links"]:
        target, fragment = _resolve(r["url"], link["href"])
        if not target.exists():
            bad.append(f"{link['kind']} {link['href']!r}: no such file")
        elif fragment and target in ids_by_file and fragment not in ids_by_file[target]:
            bad.append(f"{link['kind']} {link['href']!r} ({link['text']!r}): no anchor #{fragment}")
        elif link["kind"] in ("equation", "citation") and not link["text"].strip("()[]# ?"):
            bad.append(f"{link['kind']} {link['href']!r} shows no number or name: {link['text']!r}")
    assert not bad, f"{page}:\n  " + "\n  ".join(bad[:10])


def test_every_chapter_has_a_page():
    assert any(p.startswith("chapters/0") for p in PAGES), f"no chapter pages under {HTML}: build the book first"
