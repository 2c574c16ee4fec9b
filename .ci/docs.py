#!/usr/bin/env python
"""Build the docs site into _docs/ from the notebooks in nbs/, offline (`nbdev_docs` needs Quarto, which these
machines cannot install).

    python .ci/docs.py                  # execute the notebooks, process them with nbdev, render them with Sphinx
    python .ci/docs.py --no-execute     # the same with the outputs saved in the notebooks (quick, for layout work)
    python -m http.server --directory _docs --bind 127.0.0.1 8000   # then open http://127.0.0.1:8000

1. Pages: nbdev's own sidebar (`nbdev_sidebar` writes nbs/sidebar.yml, as for Quarto): every notebook, in its order.
2. Execute each notebook once in a Jupyter kernel (nbclient), in nbs/, skipping the cells `nbdev_test` skips (the
   settings.ini `tst_flags`, here `slow` and `cuda`, `eval: false`, the `nbdev_export()` cell); a skipped cell keeps
   the outputs saved with it. Widget state is stored, so the explorer renders from it without a kernel.
3. nbdev's docs processors, unchanged (`FilterDefaults`: show_doc, `#| hide`/`export`/`echo`/`output`, frontmatter,
   links), as `nbdev_docs` runs them before Quarto.
4. What Quarto would do with the Quarto cell options left after that (`echo: false`, `output: asis`, ...) becomes
   myst-nb cell tags; links nbdev points at the published site point at this one.
5. Sphinx, with myst-nb (nothing executed again) and sphinx-book-theme. The widget manager, RequireJS and MathJax come
   from the npm registry (pinned in NPM, cached in _proc/npm/) and are served from the site, so viewing it asks
   nothing of any other host.

Needs the `docs` extra (`pip install -e ".[dev,docs]"`) and, for step 5's assets, `npm`. Intermediate files go to
_proc/ (the executed notebooks in _proc/executed/, the processed ones in _proc/site/); both folders are git-ignored.
"""
import argparse, json, os, re, shutil, subprocess, sys, tarfile, time, uuid, warnings
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# the browser-side assets, from the npm registry: package -> (version, {file in the package: where it goes under _static/})
NPM = {
    "requirejs": ("2.3.8", {"require.js": "require.js"}),
    "@jupyter-widgets/html-manager": ("1.0.15", {"dist/embed-amd.js": "jupyter-widgets/embed-amd.js",
                                                 "dist/*.woff2": "jupyter-widgets/", "dist/*.woff": "jupyter-widgets/"}),
    # the combined TeX/MathML component and what it loads on demand (TeX extensions, fonts, menu, accessibility)
    "mathjax": ("3.2.2", {"es5/tex-mml-chtml.js": "mathjax/tex-mml-chtml.js", "es5/input/tex/extensions/**": "mathjax/input/tex/extensions/",
                          "es5/output/chtml/fonts/woff-v2/**": "mathjax/output/chtml/fonts/woff-v2/",
                          "es5/ui/**": "mathjax/ui/", "es5/a11y/**": "mathjax/a11y/", "LICENSE": "mathjax/LICENSE"}),
}
# Runs between RequireJS and the widget manager, on pages with widgets (html-manager 1 with MathJax 3):
SETUP_WIDGETS_JS = """\
// The widget manager's modules load their fonts from where RequireJS says each lives: here, beside this file.
const here = new URL(".", document.currentScript.src).href.replace(/\\/$/, "");
require.config({paths: {"@jupyter-widgets": here, "@jupyter-widgets/html-manager/dist": here}});
window.__jupyter_widgets_assets_path__ = here + "/";
// ipywidgets 8 typesets with MathJax 2's MathJax.Hub.Queue whenever window.MathJax exists; this site has MathJax 3:
// whatever becomes window.MathJax gets that one call, done the MathJax 3 way.
(() => {
  const hub = {Queue: cmd => window.MathJax.typesetPromise && window.MathJax.typesetPromise([cmd[2]])};
  let mj = window.MathJax;
  const addHub = v => { if (v && typeof v === "object" && !v.Hub) v.Hub = hub; return v; };
  Object.defineProperty(window, "MathJax", {configurable: true, get: () => mj, set: v => { mj = addHub(v); }});
  addHub(mj);
})();
"""
QUARTO_OPTION = re.compile(r"^#\|\s*([\w-]+)\s*:\s*(.*?)\s*$")


# ------------------------------------------------------------------------------------------------------------ pages
def sidebar(nbs: Path) -> list:
    """The site's pages as nbdev's sidebar lists them: [(section or None, [notebook paths])], the home page first.
    `nbdev_sidebar` writes nbs/sidebar.yml (or, with `custom_sidebar = True`, leaves the hand-written one)."""
    import yaml
    from nbdev.quarto import nbdev_sidebar
    nbdev_sidebar.__wrapped__(path=nbs)
    groups = [(None, [])]
    def walk(entries, section):
        for e in entries:
            if isinstance(e, str): groups[-1][1].append(nbs / e)
            elif isinstance(e, dict) and "contents" in e:
                title = e.get("section", e.get("text", ""))
                groups.append((f"{section} / {title}" if section else title, []))
                walk(e["contents"], title)
            else: print(f"docs: sidebar entry {e!r} is not a page or a section; left out", file=sys.stderr)
    walk(yaml.safe_load((nbs / "sidebar.yml").read_text())["website"]["sidebar"]["contents"], None)
    skipped = [p for _, ps in groups for p in ps if p.suffix != ".ipynb"]
    if skipped: print(f"docs: only notebooks are rendered here; left out {[str(p) for p in skipped]}", file=sys.stderr)
    return [(s, [p for p in ps if p.suffix == ".ipynb"]) for s, ps in groups if any(p.suffix == ".ipynb" for p in ps)]


# -------------------------------------------------------------------------------------------------------- execution
def skipped(cell, flags: set) -> bool:
    "Whether `nbdev_test` would skip this code cell (the rule of `nbdev.test.test_nb`)."
    from nbdev.process import extract_directives
    if "nbdev_export" + "(" in cell.source: return True
    d = extract_directives(cell, remove=False)
    if d.get("eval:", [""])[0].lower() == "false": return True
    return bool(flags & d.keys())


def execute(src: Path, flags: set, timeout: int):
    """`src` run top to bottom in a kernel in its folder, the cells `nbdev_test` skips left as saved, widget state
    stored; notebooks `nbdev_test` does not run at all (`skip_exec: true`, a `.notest` beside them) are returned as saved."""
    import nbformat
    from nbclient import NotebookClient
    from nbdev.frontmatter import FrontmatterProc
    from nbdev.process import NBProcessor
    from fastcore.basics import str2bool
    nb = nbformat.read(src, as_version=4)
    fm = getattr(NBProcessor(src, procs=FrontmatterProc, process=True).nb, "frontmatter_", {})
    if str2bool(fm.get("skip_exec", False)) or (src.parent / ".notest").exists(): return nb, False
    tag = "skip-execution"  # nbclient's own tag: the cell is not run and keeps its outputs
    marked = [c for c in nb.cells if c.cell_type == "code" and skipped(c, flags)]
    for c in marked: c.metadata.setdefault("tags", []).append(tag)
    NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True, skip_cells_with_tag=tag,
                   resources={"metadata": {"path": str(src.parent)}}).execute()
    for c in marked:
        c.metadata.tags.remove(tag)
        if not c.metadata.tags: del c.metadata["tags"]
    return nb, True


# ------------------------------------------------------------------------------------ nbdev's processing, for myst-nb
def options(cell) -> tuple:
    "The Quarto options (`#| key: value` lines) at the top of a processed code cell, and its code without them."
    lines, opts = cell.source.split("\n"), {}
    while lines and (m := QUARTO_OPTION.match(lines[0])):
        opts[m[1]] = m[2].strip("'\"").lower(); lines.pop(0)
    return opts, "\n".join(lines)


def local_links(md: str, site: str) -> str:
    """nbdev links our own names to the published site (`{site}core.html#name`): link this site's page instead
    (`core.ipynb#name`, which myst checks and resolves; its headings carry Quarto's ids, see `heading_id`). In code
    blocks (show_doc's signatures, whose parameter comments nbdev linkifies too) a link is only its text."""
    parts = re.split(r"(^```.*?^```$)", md, flags=re.S | re.M)
    for i, part in enumerate(parts):
        if i % 2: parts[i] = re.sub(r"\[`?([^\]`]+)`?\]\([^)\s]+\)", r"\1", part)
        else: parts[i] = re.sub(rf"\]\({re.escape(site)}([\w.-]+)\.html(#[^)\s]*)?\)", lambda m: f"]({m[1]}.ipynb{m[2] or ''})", part)
    return "".join(parts)


def heading_id(title: str) -> str:
    "The id Quarto (pandoc) gives a heading, which nbdev's links use: `RunFolder.finish` -> `runfolder.finish`."
    s = re.sub(r"\s+", "-", re.sub(r"[^\w\s.-]", "", title.lower()).strip())
    return re.sub(r"^[^a-z]+", "", s)


def markdown_of(outputs: list) -> str:
    "What Quarto puts into the page for an `output: asis` cell: its markdown (or printed) output as markdown."
    parts = [o.data["text/markdown"] if o.get("data", {}).get("text/markdown") else o.get("text", "")
             for o in outputs if "text/markdown" in o.get("data", {}) or o.get("name") == "stdout"]
    return "\n\n".join("".join(p) if isinstance(p, list) else p for p in parts)


def heading_first(md: str) -> str:
    """show_doc's markdown starts with a rule and a `[source]` link Quarto floats beside the heading below it: here the
    heading comes first (a section cannot start with a rule, and the link belongs to the name it documents)."""
    md = re.sub(r"\A\s*---\s*\n", "", md)
    return re.sub(r"\A\s*(\[source\]\([^)\s]*\)(?:\{[^}\n]*\})?)\s*\n+(#+ [^\n]*)\n", r"\2\n\n\1\n", md)


def cell(cell_type: str, source: str, **kw) -> dict:
    return dict(cell_type=cell_type, id=uuid.uuid4().hex[:8], metadata={}, source=source, **kw)


def for_myst(nb, site: str) -> list:
    """The cells of an nbdev-processed notebook as myst-nb renders them like Quarto would: the frontmatter as the
    page's title and lead, `include: false` dropped, `echo: false` / `output: false` / `code-fold` as cell tags,
    `output: asis` (show_doc) as markdown."""
    fm = nb.frontmatter_
    title = fm.get("title") or Path(nb.path_).stem
    cells = [cell("markdown", f"# {title}" + (f"\n\n> {fm['description']}" if fm.get("description") else ""))]
    for c in nb.cells:
        if c.cell_type == "raw" and c.source.startswith("---"): continue  # the frontmatter nbdev inserted
        if c.cell_type == "markdown": c.source = local_links(c.source, site)
        if c.cell_type != "code": cells.append(c); continue
        opts, c.source = options(c)
        for o in c.get("outputs", []):
            if o.get("data", {}).get("text/markdown"):
                md = o.data["text/markdown"]
                o.data["text/markdown"] = local_links(md if isinstance(md, str) else "".join(md), site)
        if opts.get("include") == "false": continue
        if opts.get("output") == "asis":
            if opts.get("echo") != "false": cells.append(dict(c, outputs=[]))
            cells.append(cell("markdown", heading_first(markdown_of(c.outputs))))
            continue
        tags = [t for k, v, t in [("echo", "false", "remove-input"), ("output", "false", "remove-output"),
                                  ("code-fold", "true", "hide-input")] if opts.get(k) == v]
        if tags: c.metadata["tags"] = c.metadata.get("tags", []) + tags
        cells.append(c)
    return cells


def toctree(pages: list) -> str:
    "The home page's toctrees: Sphinx's navigation, in the sidebar's order."
    trees = []
    for section, docs in pages:
        opts = ":hidden:\n:maxdepth: 2\n" + (f":caption: {section}\n" if section else "")
        trees.append("```{toctree}\n" + opts + "\n" + "\n".join(docs) + "\n```")
    return "\n\n".join(trees)


def build_page(src: Path, proc: Path, run: bool, flags: set, timeout: int) -> dict:
    "Execute (if `run`) and process one notebook; writes _proc/executed/NAME.ipynb and _proc/site/PAGE.ipynb."
    import nbformat
    from execnb.nbio import read_nb, nb2dict
    from nbdev.config import get_config
    from nbdev.processors import FilterDefaults
    t0 = time.time()
    os.environ["IN_TEST"] = "1"  # as nbdev_test and nbdev's docs processing set it
    if run: nb, ran = execute(src, flags, timeout)
    else: nb, ran = nbformat.read(src, as_version=4), False
    executed = proc / "executed" / src.name
    nbformat.write(nb, executed)
    nb = read_nb(executed)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        FilterDefaults()(nb)  # nbdev's docs processors, as `nbdev_docs` runs them
    mixed = [w for w in caught if "imports and other code" in str(w.message)]
    for w in caught:
        if w not in mixed: warnings.showwarning(w.message, w.category, w.filename, w.lineno)
    cfg = get_config()
    nb.cells = for_myst(nb, f"{cfg.doc_host}{cfg.doc_baseurl}".rstrip("/") + "/")
    page = Path(nb.frontmatter_.get("output-file", src.stem + ".html")).stem
    out = nbformat.from_dict(nb2dict(nb))
    for c in out.cells: c.setdefault("id", uuid.uuid4().hex[:8])
    nbformat.validate(out)
    nbformat.write(out, proc / "site" / f"{page}.ipynb")
    return dict(notebook=src.name, page=page, title=nb.frontmatter_.get("title", page), executed=ran,
                mixed_import_cells=len(mixed), seconds=round(time.time() - t0, 1))


# --------------------------------------------------------------------------------------------------- assets, Sphinx
def vendor(static: Path, cache: Path):
    "Copy the browser-side assets (see NPM) from the npm registry's packages into `static`; tarballs are cached."
    import fnmatch
    cache.mkdir(parents=True, exist_ok=True)
    for name, (version, files) in NPM.items():
        tgz = cache / f"{name.lstrip('@').replace('/', '-')}-{version}.tgz"
        if not tgz.exists():
            if not shutil.which("npm"): sys.exit("docs: npm is needed once to fetch the site's JavaScript (Debian: apt-get install npm)")
            subprocess.run(["npm", "pack", f"{name}@{version}", "--silent", "--pack-destination", str(cache)],
                           check=True, stdout=subprocess.DEVNULL)
        with tarfile.open(tgz) as tar:
            members = [m for m in tar.getmembers() if m.isfile()]
            for pattern, dest in files.items():
                hits = [m for m in members if fnmatch.fnmatch(m.name, f"package/{pattern}")]
                if not hits: raise FileNotFoundError(f"{pattern} is not in {tgz.name}")
                for m in hits:
                    rel = m.name[len("package/"):]
                    base = pattern.split("*")[0] if "*" in pattern else rel
                    target = static / (dest + rel[len(base):].lstrip("/") if dest.endswith("/") else dest)
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(tar.extractfile(m).read())
    (static / "jupyter-widgets" / "setup.js").write_text(SETUP_WIDGETS_JS)


def sphinx_config(cfg, static: Path) -> dict:
    "Sphinx's configuration (there is no conf.py: this is it)."
    return dict(
        project=cfg.title, author=cfg.author, copyright=cfg.copyright, release=cfg.version, version=cfg.version,
        extensions=["myst_nb"],
        nb_execution_mode="off",                 # executed once, above
        nb_render_markdown_format="myst",         # markdown outputs with tables and math
        nb_merge_streams=True,
        nb_ipywidgets_js={"require.js": {}, "jupyter-widgets/setup.js": {},
                          "jupyter-widgets/embed-amd.js": {"data-jupyter-widgets-cdn": "_static/jupyter-widgets/"}},
        myst_enable_extensions=["dollarmath", "amsmath", "colon_fence", "attrs_inline"],
        myst_heading_anchors=6, myst_heading_slug_func=heading_id,  # headings get Quarto's ids too
        mathjax_path="mathjax/tex-mml-chtml.js",  # relative: served from _static
        html_theme="sphinx_book_theme", html_title=cfg.title, html_static_path=[str(static)],
        html_theme_options=dict(repository_url=cfg.git_url, use_repository_button=True, home_page_in_toc=True,
                                show_toc_level=2, use_download_button=False),
        html_copy_source=False, html_show_sourcelink=False,
        smartquotes=False,                        # `--steps` in prose is a flag, not an en dash
        exclude_patterns=[],
        # show_doc's headings may skip a level, as under Quarto; a signature such as `errors=(<class ...>,)` is not Python
        suppress_warnings=["myst.header", "misc.highlighting_failure", "config.cache"],  # config.cache: heading_id is a function
    )


def render(srcdir: Path, outdir: Path, conf: dict, work: Path):
    "Sphinx builds the site in `work` (myst-nb writes beside its output folder) and the site is then moved to `outdir`."
    from sphinx.application import Sphinx
    html = work / "html"
    for d in (html, outdir): shutil.rmtree(d, ignore_errors=True)
    app = Sphinx(str(srcdir), None, str(html), str(work / "doctrees"), "html", confoverrides=conf, freshenv=True)
    app.build()
    if app.statuscode: sys.exit(f"docs: Sphinx failed (status {app.statuscode})")
    shutil.move(html, outdir)


# ------------------------------------------------------------------------------------------------------------- main
def build(execute_nbs=True, n_workers=2, timeout=1800, out=None) -> dict:
    "Build the site; returns what was built (pages, seconds, size)."
    from nbdev.config import get_config
    os.chdir(ROOT)
    cfg = get_config()
    nbs, out = Path(cfg.nbs_path), Path(out or cfg.doc_path)
    proc = ROOT / "_proc"
    for d in ("executed", "site"):
        shutil.rmtree(proc / d, ignore_errors=True); (proc / d).mkdir(parents=True)
    os.environ.setdefault("HF_HUB_OFFLINE", "1"); os.environ.setdefault("OMP_NUM_THREADS", "1")
    t0 = time.time()
    pages = sidebar(nbs)
    flags = set(cfg.tst_flags.split())
    notebooks = [p for _, ps in pages for p in ps]
    with ProcessPoolExecutor(n_workers, max_tasks_per_child=1) as pool:  # a fresh process per notebook
        jobs = {p: pool.submit(build_page, p, proc, execute_nbs, flags, timeout) for p in notebooks}
        done = {}
        for p, j in jobs.items():
            try: done[p] = j.result()
            except Exception as e:
                for other in jobs.values(): other.cancel()  # those not started; the running ones finish first
                sys.exit(f"docs: {p.name} failed:\n{e}")
            d = done[p]
            mixed = f"; nbdev's docs step also ran {d['mixed_import_cells']} cell(s) mixing imports with other code" if d["mixed_import_cells"] else ""
            print(f"docs: {p.name} -> {d['page']}.html ({'executed, ' if d['executed'] else ''}{d['seconds']} s{mixed})", flush=True)
    home = done[notebooks[0]]["page"]
    if home != "index": sys.exit(f"docs: the first page of the sidebar must be the home page index.ipynb, not {notebooks[0].name}")
    index = proc / "site" / "index.ipynb"
    nb = json.loads(index.read_text())
    nb["cells"].append(cell("markdown", toctree([(s, [done[p]["page"] for p in ps if done[p]["page"] != "index"])
                                                  for s, ps in pages])))
    index.write_text(json.dumps(nb, indent=1, ensure_ascii=False))
    t1 = time.time()
    static = proc / "static"
    shutil.rmtree(static, ignore_errors=True)
    vendor(static, proc / "npm")
    render(proc / "site", out, sphinx_config(cfg, static), proc)
    size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    info = dict(pages=[done[p] for p in notebooks], notebooks_seconds=round(t1 - t0, 1),
                sphinx_seconds=round(time.time() - t1, 1), seconds=round(time.time() - t0, 1), site=str(out),
                site_mb=round(size / 2**20, 1), files=sum(1 for f in out.rglob("*") if f.is_file()))
    (proc / "build.json").write_text(json.dumps(info, indent=1))
    print(f"docs: {len(notebooks)} pages in {out}/ ({info['site_mb']} MB, {info['files']} files); "
          f"{info['seconds']} s ({info['notebooks_seconds']} s notebooks, {info['sphinx_seconds']} s Sphinx)")
    return info


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--no-execute", action="store_true", help="use the outputs saved in the notebooks")
    ap.add_argument("--n_workers", type=int, default=2, help="notebooks processed at once (default 2)")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds a cell may run (default 1800)")
    ap.add_argument("--out", default=None, help="where the site goes (default: settings.ini doc_path, _docs)")
    a = ap.parse_args(argv)
    build(not a.no_execute, a.n_workers, a.timeout, a.out)


if __name__ == "__main__":
    main()
