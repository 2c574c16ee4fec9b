"""README.md and nbs/index.ipynb (from which nbdev builds the README and the docs home page) must give
a newcomer the same commands: every fenced ```bash block of the README appears verbatim in a markdown
cell of the index notebook."""
import json, re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FENCE = re.compile(r"^```bash[ \t]*\n(.*?)^```", re.S | re.M)


def _bash_blocks(markdown: str) -> list:
    return [b.strip("\n") for b in FENCE.findall(markdown.replace("\r\n", "\n"))]


def _markdown_cells(nb_path: Path) -> list:
    nb = json.loads(nb_path.read_text(encoding="utf-8"))
    out = []
    for c in nb["cells"]:
        if c.get("cell_type") != "markdown": continue
        src = c.get("source", "")
        out.append(("".join(src) if isinstance(src, list) else src).replace("\r\n", "\n"))
    return out


def test_readme_commands_match_index_notebook():
    readme, index = ROOT / "README.md", ROOT / "nbs" / "index.ipynb"
    assert readme.exists(), "README.md is missing"
    assert index.exists(), "nbs/index.ipynb is missing (nbdev's home page and README source)"
    blocks = _bash_blocks(readme.read_text(encoding="utf-8"))
    assert blocks, "README.md has no ```bash blocks with the newcomer commands"
    commands = [l.strip() for b in blocks for l in b.splitlines() if l.strip() and not l.strip().startswith("#")]
    assert len(commands) >= 2, f"README.md should give (at least) the two newcomer commands; found {commands}"
    cells = _markdown_cells(index)
    for b in blocks:
        assert any(b in c for c in cells), f"this README command block is not in any markdown cell of nbs/index.ipynb:\n{b}"


def test_bash_block_parser():
    md = "intro\n```bash\npip install x\n```\ntext\n```python\nprint(1)\n```\n```bash\nx --help\ny\n```\n"
    assert _bash_blocks(md) == ["pip install x", "x --help\ny"]


def test_readme_prose_matches_index_notebook():
    "The README is kept in step with the index notebook by hand (nbdev_readme needs Quarto): every paragraph of its prose is in one of the notebook's markdown cells."
    readme = (ROOT / "README.md").read_text(encoding="utf-8").replace("\r\n", "\n")
    prose = re.sub(r"^```.*?^```[ \t]*$", "", readme, flags=re.S | re.M)  # fenced blocks are checked above (bash) or are code cells
    md = "\n\n".join(_markdown_cells(ROOT / "nbs" / "index.ipynb"))
    paragraphs = [p.strip() for p in prose.split("\n\n") if p.strip()]
    assert len(paragraphs) > 10, paragraphs
    stale = [p for p in paragraphs if p not in md]
    assert not stale, "README.md paragraphs not in nbs/index.ipynb (edit both):\n" + "\n---\n".join(p[:300] for p in stale)
