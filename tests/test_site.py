"""The docs site in headless Chromium, served from 127.0.0.1: every notebook is a page, in the sidebar's order, with
its title, its API headings (signature and docstring), its images and math; the explorer widget renders from its
saved state; search finds public names; no request goes to any other host.

Opt-in: build the site first (`python .ci/docs.py`), then

    DSD_NB_SITE=_docs pytest -q tests/test_site.py

Needs Chromium (Debian: `apt-get install chromium`) and playwright (the `docs` extra; no browser download: it drives
the installed Chromium). Screenshots of the home page and the explorer's page go to $DSD_NB_SITE_SHOTS (default
_site_check/). The expectations come from the notebooks (titles, widget and image outputs of the processed notebooks
in _proc/site/) and from the package (`__all__`, docstrings), not from the site itself.
"""
import ast, functools, http.server, json, os, re, shutil, threading
from pathlib import Path
from urllib.parse import urlparse

import pytest

ROOT = Path(__file__).resolve().parents[1]
SITE = os.environ.get("DSD_NB_SITE")
pytestmark = pytest.mark.skipif(not SITE, reason="set DSD_NB_SITE=_docs (after `python .ci/docs.py`) to check the site in Chromium")
PROC = ROOT / "_proc" / "site"
SHOTS = Path(os.environ.get("DSD_NB_SITE_SHOTS", ROOT / "_site_check"))
IMAGE_TYPES = ("image/png", "image/jpeg", "image/svg+xml", "image/gif")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"


# ------------------------------------------------------------------------------------------ what the notebooks say
def notebook_pages() -> list:
    "(notebook, page name, title) for every notebook nbdev renders (names starting with _ or . are skipped, as nbdev does)."
    from nbdev.frontmatter import FrontmatterProc
    from nbdev.process import NBProcessor
    res = []
    for nb in sorted((ROOT / "nbs").glob("*.ipynb")):
        if nb.name[0] in "_.": continue
        fm = NBProcessor(nb, procs=FrontmatterProc, process=True).nb.frontmatter_
        res.append((nb, Path(fm.get("output-file", nb.stem + ".html")).stem, fm.get("title", nb.stem)))
    return res


PAGES = notebook_pages()


def api(page: str) -> list:
    """(name, heading id, first docstring line) of the public functions and classes that nbdev documents on `page`:
    the names in a module's `__all__` that nbdev's symbol index places there."""
    from dsd_nb._modidx import d
    res = []
    for mod, syms in d["syms"].items():
        tree = ast.parse((ROOT / (mod.replace(".", "/") + ".py")).read_text())
        public = next((ast.literal_eval(n.value) for n in tree.body if isinstance(n, ast.Assign)
                       and any(getattr(t, "id", "") == "__all__" for t in n.targets)), [])
        docs = {n.name: ast.get_docstring(n) for n in tree.body if isinstance(n, (ast.FunctionDef, ast.ClassDef))
                and not any("patch" in ast.unparse(x) for x in n.decorator_list)}  # fastcore's @patch: a method
        for sym, (url, _) in syms.items():
            name = sym[len(mod) + 1:]
            if "." in name or name not in public or not url.startswith(page + ".html#"): continue
            res.append((name, url.split("#")[1], (docs.get(name) or "").split("\n")[0]))
    return res


def outputs(page: str, kind) -> int:
    "How many outputs of the processed notebook of `page` hold one of the mime types `kind`."
    nb = json.loads((PROC / f"{page}.ipynb").read_text())
    return sum(1 for c in nb["cells"] for o in c.get("outputs", []) if any(k in o.get("data", {}) for k in kind))


def explorer(page: str) -> bool:
    "Whether the saved widget state of `page` holds images (the attention explorer; progress bars hold none)."
    nb = json.loads((PROC / f"{page}.ipynb").read_text())
    state = nb["metadata"].get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    return outputs(page, [WIDGET_VIEW]) > 0 and any(m.get("model_name") == "ImageModel" for m in state.values())


def has_math(page: str) -> bool:
    nb = json.loads((PROC / f"{page}.ipynb").read_text())
    return any(re.search(r"\$[^$\s][^$]*\$", "".join(c["source"])) for c in nb["cells"] if c["cell_type"] == "markdown")


def plain(text: str) -> str:
    "Text as compared: markdown's backticks gone, typographic quotes straight, whitespace single."
    return " ".join(text.replace("`", "").translate(str.maketrans("‘’“”", "''\"\"")).split())


# ------------------------------------------------------------------------------------------- server and browser
@pytest.fixture(scope="module")
def site():
    site = Path(SITE)
    assert (site / "index.html").exists(), f"{site}/index.html is missing: build the site with `python .ci/docs.py`"
    handler = functools.partial(type("Quiet", (http.server.SimpleHTTPRequestHandler,), {"log_message": lambda *a: None}),
                                directory=str(site))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture(scope="module")
def browser():
    pw = pytest.importorskip("playwright.sync_api")
    chromium = next((p for p in map(shutil.which, ["chromium", "chromium-browser", "google-chrome"]) if p), None)
    if chromium is None: pytest.skip("Chromium is not installed (Debian: apt-get install chromium)")
    with pw.sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


class Visit:
    "A page opened in a fresh browser context that lets no request leave 127.0.0.1, recording what it asked for."
    def __init__(self, browser, url):
        self.outside, self.failed, self.errors = [], [], []
        self.context = browser.new_context(viewport={"width": 1280, "height": 900})
        self.context.route("**/*", self._route)
        self.page = self.context.new_page()
        self.page.on("requestfailed", lambda r: self.failed.append(f"{r.url} ({r.failure})"))
        self.page.on("response", lambda r: r.status >= 400 and self.failed.append(f"{r.url} (HTTP {r.status})"))
        self.page.on("pageerror", lambda e: self.errors.append(str(e)))
        self.page.on("websocket", lambda w: self.outside.append(w.url))
        self.page.goto(url, wait_until="networkidle")
        # every font the page declares, used yet or not: a missing one is a failed request now, not when a glyph needs it
        self.page.evaluate("() => Promise.allSettled([...document.fonts].map(f => f.load()))")
        self.page.wait_for_load_state("networkidle")

    def _route(self, route):
        u = urlparse(route.request.url)
        if u.scheme in ("data", "blob") or u.hostname == "127.0.0.1": return route.continue_()
        self.outside.append(route.request.url)
        route.abort()

    def __enter__(self): return self

    def __exit__(self, *exc): self.context.close()


def test_every_notebook_is_a_page_in_sidebar_order(site, browser):
    sidebar = (ROOT / "nbs" / "sidebar.yml").read_text()  # nbdev_sidebar's order, which the build uses
    order = [Path(p).stem for p in re.findall(r"^\s*-\s*(\S+\.ipynb)\s*$", sidebar, re.M)]
    by_nb = {nb.stem: page for nb, page, _ in PAGES}
    assert sorted(order) == sorted(by_nb), f"sidebar.yml lists {order}, nbs/ has {sorted(by_nb)}"
    with Visit(browser, site + "/index.html") as v:
        links = v.page.eval_on_selector_all(".bd-sidenav li.toctree-l1 > a", "as => as.map(a => a.getAttribute('href'))")
    want = [by_nb[o] + ".html" for o in order if by_nb[o] != "index"]
    assert [l.split("#")[0] for l in links if l.split("#")[0] != "index.html" and l != "#"] == want, links


@pytest.mark.parametrize("page,title", [(p, t) for _, p, t in PAGES])
def test_page(site, browser, page, title):
    with Visit(browser, f"{site}/{page}.html") as v:
        p = v.page
        assert not v.outside, f"requests left 127.0.0.1: {v.outside}"
        assert not v.failed, f"failed requests: {v.failed}"
        assert p.inner_text("main h1").strip().rstrip("#").strip() == title
        assert title in p.title()
        # API docs: each documented name has a heading with nbdev's (Quarto's) id, a signature and its docstring
        for name, anchor, doc in api(page):
            sec = p.evaluate("""a => { const e = document.getElementById(a); const s = e && (e.closest('section') || e);
                                       return s ? {h: s.querySelector('h1,h2,h3,h4,h5,h6').innerText, text: s.innerText,
                                                   pre: [...s.querySelectorAll('pre')].map(x => x.innerText).join('\\n')} : null }""", anchor)
            assert sec, f"{page}.html has no heading #{anchor} for {name}"
            assert sec["h"].strip().rstrip("#").strip() == name, (anchor, sec["h"])
            assert re.search(rf"\b(def|class) {re.escape(name)}\b|\b{re.escape(name)}\s*\(", sec["pre"]), f"{name}: no signature in {sec['pre'][:300]!r}"
            if doc: assert plain(doc) in plain(sec["text"]), f"{name}: docstring {doc!r} not shown"
        # images: as many as the notebook's outputs hold, all loaded
        imgs = p.eval_on_selector_all("main img", "is => is.map(i => [i.currentSrc, i.complete && i.naturalWidth > 0, !!i.closest('.jupyter-widgets')])")
        assert all(ok for _, ok, _ in imgs), f"broken images: {[s for s, ok, _ in imgs if not ok]}"
        figures = sum(1 for _, _, in_widget in imgs if not in_widget)
        assert figures >= outputs(page, IMAGE_TYPES), f"{figures} images on the page, {outputs(page, IMAGE_TYPES)} in the notebook's outputs"
        if has_math(page):
            p.wait_for_selector("main mjx-container", timeout=20000)
        if views := outputs(page, [WIDGET_VIEW]):  # every widget drawn from its saved state, none left empty
            p.wait_for_function("n => document.querySelectorAll('main .widget-subarea > .jupyter-widgets').length >= n", arg=views, timeout=30000)
            drawn = p.eval_on_selector_all("main .widget-subarea > .jupyter-widgets", "ws => ws.map(w => w.getBoundingClientRect().height)")
            assert len(drawn) == views and all(h > 10 for h in drawn), (views, drawn)
        if explorer(page):  # the explorer: its controls and its images (a PNG view of the attention), loaded
            p.wait_for_selector("main .jupyter-widgets img", timeout=30000)
            w = p.evaluate("""() => [...document.querySelectorAll('main .widget-subarea > .jupyter-widgets')]
                                   .map(e => ({imgs: [...e.querySelectorAll('img')].filter(i => i.naturalWidth > 0).length,
                                               selects: e.querySelectorAll('select').length, h: e.getBoundingClientRect().height}))""")
            assert any(x["imgs"] >= 1 and x["selects"] >= 1 and x["h"] > 100 for x in w), w
        assert not v.errors, f"JavaScript errors: {v.errors}"


def test_the_explorer_widget_is_on_a_page():
    assert any(explorer(page) for _, page, _ in PAGES), "no page holds the explorer's widget state"


@pytest.mark.parametrize("name,page", [("load_pipeline", "models"), ("DSDScorer", "scoring"), ("plot_word_maps", "visualize")])
def test_search_finds_public_names(site, browser, name, page):
    with Visit(browser, f"{site}/search.html?q={name}") as v:
        v.page.wait_for_selector("#search-results ul.search li a", timeout=20000)
        hrefs = v.page.eval_on_selector_all("#search-results ul.search li a", "as => as.map(a => a.getAttribute('href'))")
        assert not v.outside, v.outside
    assert any(h.split("#")[0].split("?")[0].endswith(f"{page}.html") for h in hrefs), (name, hrefs)


def test_screenshots(site, browser):
    "The home page and the explorer's page, as a reader sees them (saved for CI's output), are not blank."
    import numpy as np, PIL.Image
    widget_page = next(page for _, page, _ in PAGES if explorer(page))
    SHOTS.mkdir(parents=True, exist_ok=True)
    for page in ["index", widget_page]:
        with Visit(browser, f"{site}/{page}.html") as v:
            if page == widget_page: v.page.wait_for_selector("main .jupyter-widgets img", timeout=30000)
            png = SHOTS / f"{page}.png"
            v.page.screenshot(path=str(png), full_page=True)
        a = np.asarray(PIL.Image.open(png).convert("RGB")).astype(int)
        content = (np.abs(a - np.median(a.reshape(-1, 3), 0)).max(-1) > 30).mean()
        print(f"screenshot: {png} ({a.shape[1]}x{a.shape[0]}, {content:.0%} content)")
        assert content > 0.03, (png, content)
