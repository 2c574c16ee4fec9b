"""The docs build (`.ci/docs.py`) in parts, without Sphinx or a browser: the page order, which cells run, nbdev's
processing turned into what myst-nb renders, links and heading ids, assets served locally. `tests/test_site.py`
checks a built site in Chromium. Also: the Quarto configuration `nbdev_docs` uses stays what nbdev would write."""
import importlib.util, json, sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def docs():
    spec = importlib.util.spec_from_file_location("dsd_docs", ROOT / ".ci" / "docs.py")
    mod = importlib.util.module_from_spec(spec); sys.modules["dsd_docs"] = mod
    spec.loader.exec_module(mod)
    return mod


def _code(src, outputs=()): return nbformat.v4.new_code_cell(src, outputs=list(outputs))


def eq(a, b): assert a == b, f"\n{a!r}\n!=\n{b!r}"


def test_pages_are_every_notebook_in_nbdevs_sidebar_order(docs, monkeypatch):
    monkeypatch.chdir(ROOT)
    pages = docs.sidebar(ROOT / "nbs")
    names = [p.name for _, ps in pages for p in ps]
    eq(names[0], "index.ipynb")
    eq(sorted(names), sorted(p.name for p in (ROOT / "nbs").glob("*.ipynb") if p.name[0] not in "_."))
    eq(names[1:], sorted(names[1:]))  # nbdev orders by name: 00_core, 01_inputs, 01a_plumbing, ...


def test_cells_skipped_as_nbdev_test_skips_them(docs):
    flags = {"slow", "cuda", "notest"}
    eq([docs.skipped(_code(s), flags) for s in
             ["x = 1", "#| slow\nx = 1", "#| cuda\nx = 1", "#| eval: false\nx = 1", "#|hide\nimport nbdev; nbdev.nbdev_export()",
              "#| export\ndef f(): pass", "#| hide\nx = 1"]],
            [False, True, True, True, True, False, False])


def test_heading_ids_are_the_anchors_of_nbdevs_symbol_index(docs):
    "The ids the site gives show_doc's headings are the ones nbdev's links (and other nbdev projects) use."
    from dsd_nb._modidx import d
    pairs = [(sym[len(mod) + 1:], url.split("#")[1]) for mod, syms in d["syms"].items() for sym, (url, _) in syms.items()
             if not sym[len(mod) + 1:].startswith("_")]  # private names get no heading (and pandoc drops a leading _)
    assert len(pairs) > 100
    eq([docs.heading_id(n) for n, _ in pairs], [a for _, a in pairs])
    eq(docs.heading_id("A new folder, a resume: 2"), "a-new-folder-a-resume-2")


def test_links_to_the_published_site_become_links_to_this_one(docs):
    site = "https://dsd-nb.github.io/dsd_nb/"
    md = (f"See [`RunFolder`]({site}runs.html#runfolder), [the page]({site}runs.html) and [torch](https://pytorch.org/a.html#b).\n"
          f"```python\ndef f(\n    s, # from [`noise_scheduler`]({site}core.html#noise_scheduler)\n)\n```\n")
    eq(docs.local_links(md, site),
            "See [`RunFolder`](runs.ipynb#runfolder), [the page](runs.ipynb) and [torch](https://pytorch.org/a.html#b).\n"
            "```python\ndef f(\n    s, # from noise_scheduler\n)\n```\n")


def test_nbdev_processing_becomes_cells_myst_renders_like_quarto(docs, tmp_path, monkeypatch):
    "A small notebook through nbdev's own processors (show_doc runs), then into myst-nb's terms."
    from execnb.nbio import read_nb
    from nbdev.processors import FilterDefaults
    monkeypatch.chdir(ROOT)
    nb = nbformat.v4.new_notebook(metadata={"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}})
    nb.cells = [nbformat.v4.new_markdown_cell("# A title\n\n> The lead line"),
                _code("#| default_exp fake"),
                _code("#| hide\nfrom nbdev.showdoc import *"),
                _code('#| export\ndef double(x:int, # a number\n          )->int: # twice that\n    "Twice `x`."\n    return 2 * x'),
                _code("#| echo: false\nprint('only the output')"),
                _code("#| include: false\nsecret = 1"),
                _code("#| code-fold: true\ny = 2")]
    path = tmp_path / "05_fake.ipynb"; nbformat.write(nb, path)
    pnb = read_nb(path)
    FilterDefaults()(pnb)
    cells = docs.for_myst(pnb, "https://dsd-nb.github.io/dsd_nb/")
    src = lambda c: c["source"] if isinstance(c["source"], str) else "".join(c["source"])
    eq(src(cells[0]), "# A title\n\n> The lead line")
    doc = next(c for c in cells if "### double" in src(c))
    eq(doc["cell_type"], "markdown")      # show_doc (`output: asis`, `echo: false`) is markdown in the page
    assert "def double(\n    x:int, # a number\n)->int: # twice that" in src(doc) and "*Twice `x`.*" in src(doc), src(doc)
    assert not src(doc).lstrip().startswith("---"), src(doc)
    echo = next(c for c in cells if "only the output" in src(c))
    eq((echo["metadata"]["tags"], src(echo)), (["remove-input"], "print('only the output')"))
    fold = next(c for c in cells if src(c) == "y = 2")
    eq(fold["metadata"]["tags"], ["hide-input"])
    assert not any("secret" in src(c) or "#|" in src(c) or "def double" in src(c) and c["cell_type"] == "code" for c in cells)
    eq(pnb.frontmatter_["output-file"], "fake.html")


def test_show_doc_markdown_starts_with_its_heading(docs):
    "Quarto floats show_doc's `[source]` link beside the heading that follows it; here the heading comes first."
    md = ('---\n\n[source](https://github.com/dsd-nb/dsd_nb/blob/main/dsd_nb/runs.py#L25){target="_blank" style="float:right"}'
          '\n\n### has_checkpoint\n\n```python\ndef has_checkpoint(out)->bool:\n```\n')
    eq(docs.heading_first(md), '### has_checkpoint\n\n[source](https://github.com/dsd-nb/dsd_nb/blob/main/dsd_nb/runs.py#L25)'
                              '{target="_blank" style="float:right"}\n\n```python\ndef has_checkpoint(out)->bool:\n```\n')


def test_toctree_in_the_sidebars_order(docs):
    eq(docs.toctree([(None, ["core", "inputs"]), ("Tutorials", ["tour"])]),
            "```{toctree}\n:hidden:\n:maxdepth: 2\n\ncore\ninputs\n```\n\n"
            "```{toctree}\n:hidden:\n:maxdepth: 2\n:caption: Tutorials\n\ntour\n```")


def test_the_sites_javascript_is_served_by_the_site(docs, monkeypatch):
    "Widget manager, RequireJS and MathJax are local paths (under _static), never a CDN."
    from nbdev.config import get_config
    monkeypatch.chdir(ROOT)
    conf = docs.sphinx_config(get_config(), ROOT / "_proc" / "static")
    for path, attrs in conf["nb_ipywidgets_js"].items():
        assert "//" not in path and all("//" not in v for v in attrs.values()), (path, attrs)
    assert "//" not in conf["mathjax_path"], conf["mathjax_path"]
    eq(conf["nb_execution_mode"], "off")  # executed once by the build, not again by myst-nb
    dests = [d for _, files in docs.NPM.values() for d in files.values()]
    assert "mathjax/tex-mml-chtml.js" in dests and "require.js" in dests and "jupyter-widgets/embed-amd.js" in dests


def test_quarto_configuration_is_what_nbdev_writes(monkeypatch):
    "Where Quarto exists `nbdev_docs` uses nbs/_quarto.yml and nbs/nbdev.yml: they match settings.ini and nbdev's template."
    from nbdev.config import get_config
    from nbdev.quarto import _nbdev_yml
    monkeypatch.chdir(ROOT)
    cfg = get_config()
    vals = {k: cfg[k] for k in ["title", "description", "branch", "git_url", "doc_host", "doc_baseurl"]}
    eq((ROOT / "nbs" / "nbdev.yml").read_text(), _nbdev_yml.format(doc_path=cfg.doc_path.name, **vals))
    quarto = (ROOT / "nbs" / "_quarto.yml").read_text()
    assert "metadata-files: [nbdev.yml, sidebar.yml]" in quarto and "type: website" in quarto, quarto
