"""README.md is generated from nbs/index.ipynb by `.ci/readme.py` (nbconvert's markdown exporter; `nbdev_readme` needs
Quarto): the committed README must be what the generator gives, and it must give a newcomer the two commands CI runs
(`.ci/run` takes the second ```bash block as the test command)."""
import importlib.util, json, re, subprocess, sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / ".ci" / "readme.py"
FENCE = re.compile(r"^```bash[ \t]*\n(.*?)^```", re.S | re.M)


def _generator():
    spec = importlib.util.spec_from_file_location("dsd_readme", SCRIPT)
    mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)
    return mod


def _bash_blocks(markdown: str) -> list:
    return [b.strip("\n") for b in FENCE.findall(markdown.replace("\r\n", "\n"))]


def test_readme_is_generated_from_index_notebook():
    readme = ROOT / "README.md"
    assert readme.exists(), "README.md is missing"
    assert (ROOT / "nbs" / "index.ipynb").exists(), "nbs/index.ipynb is missing (nbdev's home page and README source)"
    assert readme.read_text(encoding="utf-8") == _generator().readme_text(), \
        "README.md is not what nbs/index.ipynb gives: run `python .ci/readme.py` and commit README.md"


def test_readme_gives_the_two_newcomer_commands():
    blocks = _bash_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(blocks) == 2, f"README.md should have two ```bash blocks (setup-and-run, then tests); found {blocks}"
    commands = [l.strip() for b in blocks for l in b.splitlines() if l.strip() and not l.strip().startswith("#")]
    assert len(commands) >= 2, f"README.md should give (at least) the two newcomer commands; found {commands}"
    setup, tests = blocks
    assert "pip install" in setup and "dsd-score" in setup, setup
    assert "nbdev_test" in tests and "pytest" in tests, tests


def test_ci_takes_the_second_bash_block_as_the_test_command():
    "The awk line of .ci/run finds the README's test command."
    awk = next(l for l in (ROOT / ".ci" / "run").read_text().splitlines() if l.startswith("test_cmd=$(awk"))
    prog = re.search(r"awk '(.*)' README.md", awk).group(1)
    out = subprocess.run(["awk", prog, str(ROOT / "README.md")], capture_output=True, text=True, check=True).stdout
    assert out.strip("\n") == _bash_blocks((ROOT / "README.md").read_text(encoding="utf-8"))[1]


def test_bash_block_parser():
    md = "intro\n```bash\npip install x\n```\ntext\n```python\nprint(1)\n```\n```bash\nx --help\ny\n```\n"
    assert _bash_blocks(md) == ["pip install x", "x --help\ny"]


def _nb(cells):
    cells = [dict(c, id=f"c{i}") for i, c in enumerate(cells)]
    return {"cells": cells, "metadata": {"kernelspec": {"language": "python", "name": "python3", "display_name": "python3"}},
            "nbformat": 4, "nbformat_minor": 5}


def _code(src, outputs=()):
    return {"cell_type": "code", "execution_count": None, "metadata": {}, "outputs": list(outputs), "source": src}


def test_generator_drops_hidden_cells_directives_and_rich_outputs(tmp_path):
    png = {"output_type": "display_data", "metadata": {}, "data": {"image/png": "iVBORw0KGgo=", "text/plain": "<Figure>"}}
    table = {"output_type": "execute_result", "execution_count": 1, "metadata": {},
             "data": {"text/html": "<table></table>", "text/plain": "   a\n0  1"}}
    warn = {"output_type": "stream", "name": "stderr", "text": "a warning"}
    nb = _nb([{"cell_type": "markdown", "metadata": {}, "source": "# Title\n\nSome prose."},
              _code("#| hide\nimport secret"),
              _code("#| include: false\nimport other"),
              _code("#| export\nx = 1\nx", [table, warn]),
              _code("plot()", [png, {"output_type": "stream", "name": "stdout", "text": "printed\n"}])])
    path = tmp_path / "index.ipynb"; path.write_text(json.dumps(nb))
    md = _generator().readme_text(path)
    assert md.startswith("# Title\n\nSome prose.\n\n```python\nx = 1\nx\n```\n"), md
    for gone in ("secret", "other", "#|", "<table>", "a warning", "<Figure>", "image/png", "\n\n\n"): assert gone not in md, (gone, md)
    assert "    printed" in md and "       a\n    0  1" in md, md


def test_check_fails_with_a_diff_on_a_stale_readme(tmp_path):
    "--check exits 1, prints a diff and names the command that fixes it; it writes nothing."
    ci = tmp_path / ".ci"; ci.mkdir(); (tmp_path / "nbs").mkdir()
    (ci / "readme.py").write_text(SCRIPT.read_text())
    (tmp_path / "nbs" / "index.ipynb").write_text(json.dumps(_nb([{"cell_type": "markdown", "metadata": {}, "source": "# New"}])))
    (tmp_path / "README.md").write_text("# Old\n")
    r = subprocess.run([sys.executable, str(ci / "readme.py"), "--check"], capture_output=True, text=True)
    assert r.returncode == 1 and "-# Old" in r.stderr and "+# New" in r.stderr and "python .ci/readme.py" in r.stderr, r.stderr
    assert (tmp_path / "README.md").read_text() == "# Old\n"
    subprocess.run([sys.executable, str(ci / "readme.py")], check=True)
    assert (tmp_path / "README.md").read_text() == "# New\n"
    assert subprocess.run([sys.executable, str(ci / "readme.py"), "--check"]).returncode == 0
