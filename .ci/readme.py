#!/usr/bin/env python
"""README.md is generated from nbs/index.ipynb by nbconvert's markdown exporter (offline; `nbdev_readme` needs Quarto).

    python .ci/readme.py           # write README.md
    python .ci/readme.py --check   # exit 1 with a diff when README.md is not what the notebook gives

What goes in: every cell except code cells marked `#| hide` (or `#| include: false`); code cells without their `#|`
lines; of the outputs saved in the notebook, only plain text (printed text, and the plain form of a result such as a
small table). Images, HTML, widgets, warnings and errors stay in the notebook and the docs: a README shows them badly.
"""
import difflib, os, re, sys
from pathlib import Path
import nbformat
from fastcore.script import call_parse
from nbconvert import MarkdownExporter

ROOT = Path(__file__).resolve().parents[1]
INDEX, README = ROOT / "nbs" / "index.ipynb", ROOT / "README.md"
FENCED = re.compile(r"(^```.*?^```$)", re.S | re.M)  # between cells nbconvert leaves two blank lines: one is enough
RICH = ("image/", "application/vnd.jupyter.widget")  # outputs holding these are left out (their text/plain is a repr)


def plain_outputs(outputs:list)->list:
    "The outputs a README keeps: stdout text, and results reduced to their text/plain form."
    keep = []
    for o in outputs:
        if o.output_type == "stream" and o.name == "stdout": keep.append(o)
        elif o.output_type in ("execute_result", "display_data") and "text/plain" in o.data \
                and not any(m.startswith(RICH) for m in o.data):
            o.data = {"text/plain": o.data["text/plain"]}; o.metadata = {}; keep.append(o)
    return keep


def readme_cells(nb):
    "The notebook `nb` with hidden cells dropped, `#|` lines removed and outputs reduced (changes `nb`)."
    cells = []
    for c in nb.cells:
        if c.cell_type == "code":
            lines = c.source.splitlines()
            flags = [l[2:].strip().replace(" ", "") for l in lines if l.startswith("#|")]
            if "hide" in flags or "include:false" in flags: continue
            c.source = "\n".join(l for l in lines if not l.startswith("#|")).strip("\n")
            c.outputs = plain_outputs(c.outputs)
        cells.append(c)
    nb.cells = cells
    nb.metadata["language_info"] = {"name": nb.metadata.get("kernelspec", {}).get("language", "python")}  # fences say ```python
    return nb


def templates()->list:
    "nbconvert's own template folder: in an environment layered over another (a .pth file), it is not under sys.prefix."
    import nbconvert
    d = Path(nbconvert.__file__).parents[4] / "share" / "jupyter" / "nbconvert" / "templates"
    return [str(d)] if d.is_dir() else []


def readme_text(index:Path=INDEX)->str:
    "The README that `index` gives, as markdown text."
    nb = readme_cells(nbformat.read(index, as_version=4))
    body, _ = MarkdownExporter(extra_template_basedirs=templates(), extra_template_paths=templates()).from_notebook_node(nb)
    parts = FENCED.split(body)  # odd parts are fenced code, kept as they are
    return "".join(p if i % 2 else re.sub(r"\n{3,}", "\n\n", p) for i, p in enumerate(parts)).strip("\n") + "\n"


@call_parse
def main(check:bool=False): # exit 1 with a diff when README.md is stale, instead of writing it
    "Write README.md from nbs/index.ipynb, or with `--check` say whether it is up to date."
    new = readme_text()
    old = README.read_text(encoding="utf-8") if README.exists() else ""
    if check:
        if old == new: return
        sys.stderr.writelines(difflib.unified_diff(old.splitlines(True), new.splitlines(True), "README.md", "from nbs/index.ipynb"))
        sys.exit("README.md is not what nbs/index.ipynb gives: run `python .ci/readme.py` and commit README.md")
    tmp = README.with_name(README.name + ".tmp")
    tmp.write_text(new, encoding="utf-8"); os.replace(tmp, README)
