"""Open the "Seeing cross-attention" tutorial in a real browser and check the page is not blank.

Steps: execute the notebook with nbclient (widget state stored in the notebook metadata, as Jupyter's "save widget
state" does), export it to HTML with nbconvert's lab template, check the HTML carries the widget state and the static
figures, open it in headless Chromium, take a full-page screenshot, and check the screenshot shows content (enough
non-background and coloured pixels).

Needs Chromium (Debian: `apt-get install chromium`) and nbconvert (`pip install nbconvert`). It is not part of the
default test run. Run it from the repository root:

    . .venv/bin/activate && HF_HUB_OFFLINE=1 python tests/browser_check.py --out /tmp/browser_check

or through pytest: `DSD_NB_BROWSER=1 pytest -q tests/test_visualize.py -k chromium`. Exit status 0: all checks
passed; 1: a check failed; 77: skipped (Chromium or nbconvert missing).

The folder given by --out keeps `executed.ipynb` (outputs and widget state saved: the static fallback the docs site
can show, since the docs build runs no kernel), `page.html` and `screenshot.png`.

Offline, the page cannot fetch the widget JavaScript (`@jupyter-widgets/html-manager`, loaded from a CDN by
nbconvert's template), so the interactive widget itself renders only where the CDN is reachable; the static figures,
tables and text render everywhere, and the widget state (including the explorer's PNG views) is checked in the HTML.
"""
import argparse, base64, io, json, os, shutil, subprocess, sys, tempfile, time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = 77


def find_chromium(explicit=None):
    for c in ([explicit] if explicit else []) + ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]:
        p = shutil.which(c) if c else None
        if p: return p
    return None


def execute(nb_path: Path, timeout: int):
    "Run the notebook top to bottom in its folder, storing the widget state; returns the executed notebook."
    import nbformat
    from nbclient import NotebookClient
    nb = nbformat.read(nb_path, as_version=4)
    env_before = os.environ.get("HF_HUB_OFFLINE")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        NotebookClient(nb, timeout=timeout, kernel_name="python3", store_widget_state=True,
                       resources={"metadata": {"path": str(nb_path.parent)}}).execute()
    finally:
        if env_before is None: os.environ.pop("HF_HUB_OFFLINE", None)
    return nb


def widget_report(nb) -> dict:
    "What the saved widget state holds: model count, Image models with PNG data, and widget views in the outputs."
    state = nb.metadata.get("widgets", {}).get("application/vnd.jupyter.widget-state+json", {}).get("state", {})
    pngs = 0
    for m in state.values():
        if m.get("model_name") == "ImageModel":
            for b in m.get("buffers", []):
                if base64.b64decode(b.get("data", ""))[:4] == b"\x89PNG": pngs += 1
    views = sum(1 for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])
                if "application/vnd.jupyter.widget-view+json" in o.get("data", {}))
    return dict(models=len(state), png_images=pngs, views=views)


def to_html(nb, out: Path) -> Path:
    from nbconvert import HTMLExporter
    body, _ = HTMLExporter(template_name="lab").from_notebook_node(nb)
    page = out / "page.html"
    page.write_text(body, encoding="utf-8")
    return page


def screenshot(chromium: str, page: Path, png: Path, width=1280, height=6000, budget_ms=8000):
    cmd = [chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--disable-dev-shm-usage", f"--window-size={width},{height}", f"--virtual-time-budget={budget_ms}",
           f"--screenshot={png}", page.resolve().as_uri()]
    with tempfile.TemporaryDirectory() as profile:
        r = subprocess.run(cmd + [f"--user-data-dir={profile}"], capture_output=True, text=True, timeout=300)
    if not png.exists(): raise RuntimeError(f"Chromium wrote no screenshot (exit {r.returncode}): {r.stderr[-2000:]}")


def blank_report(png: Path) -> dict:
    "How much of the screenshot is not page background, and how much is coloured (figures)."
    import numpy as np, PIL.Image
    a = np.asarray(PIL.Image.open(png).convert("RGB")).astype(np.int16)
    bg = np.median(a.reshape(-1, 3), 0)
    content = (np.abs(a - bg).max(-1) > 30).mean()
    coloured = ((a.max(-1) - a.min(-1)) > 60).mean()
    return dict(size=a.shape[:2], content_fraction=float(content), coloured_fraction=float(coloured),
                distinct_colours=int(len(np.unique(a.reshape(-1, 3)[::7], axis=0))))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--notebook", default=str(ROOT / "nbs" / "11_seeing_cross_attention.ipynb"))
    ap.add_argument("--out", default=None, help="folder for page.html, executed.ipynb and screenshot.png (default: a temp folder)")
    ap.add_argument("--no-execute", action="store_true", help="use the notebook's saved outputs instead of running it")
    ap.add_argument("--timeout", type=int, default=1800, help="seconds per cell")
    ap.add_argument("--chromium", default=None, help="path to the Chromium binary")
    a = ap.parse_args(argv)
    chromium = find_chromium(a.chromium)
    if chromium is None: print("SKIP: Chromium not found (Debian: apt-get install chromium)"); return SKIP
    try: import nbconvert, nbclient, nbformat  # noqa: F401
    except ImportError as e: print(f"SKIP: {e.name} is not installed (pip install nbconvert nbclient)"); return SKIP
    out = Path(a.out or tempfile.mkdtemp(prefix="dsd_nb_browser_")); out.mkdir(parents=True, exist_ok=True)
    import nbformat
    t0 = time.time()
    nb_path = Path(a.notebook)
    nb = nbformat.read(nb_path, as_version=4) if a.no_execute else execute(nb_path, a.timeout)
    nbformat.write(nb, out / "executed.ipynb")
    wr = widget_report(nb)
    page = to_html(nb, out)
    html = page.read_text(encoding="utf-8")
    n_img = html.count("data:image/png;base64")
    screenshot(chromium, page, out / "screenshot.png")
    br = blank_report(out / "screenshot.png")
    checks = {
        "widget state saved in the notebook": wr["models"] > 0 and wr["png_images"] >= 2,
        "a widget view in the outputs": wr["views"] >= 1,
        "widget state embedded in the HTML": "application/vnd.jupyter.widget-state+json" in html,
        "static figures in the HTML (>= 5 PNGs)": n_img >= 5,
        "screenshot not blank (>= 5% content)": br["content_fraction"] >= 0.05,
        "screenshot shows coloured figures (>= 0.5% coloured)": br["coloured_fraction"] >= 0.005,
    }
    print(json.dumps(dict(seconds=round(time.time() - t0, 1), out=str(out), widgets=wr, html_pngs=n_img, screenshot=br), indent=1))
    for k, ok in checks.items(): print(("ok   " if ok else "FAIL ") + k)
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
