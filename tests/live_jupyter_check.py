"""Check the attention explorer widget LIVE in JupyterLab, Notebook 7 and the classic Notebook, in headless Chromium.

`tests/browser_check.py` checks a static HTML export; this script checks the real thing: a Jupyter server, a running
kernel (the project's .venv), the ipywidgets front end in the browser, and the comm round trip. For each UI (JupyterLab
at /lab/tree/NAME.ipynb, the Notebook 7 UI at /notebooks/NAME.ipynb, then the classic (pre-7) Notebook UI of the
`nbclassic` package at /nbclassic/notebooks/NAME.ipynb, started with `jupyter-nbclassic`) it

1. writes a small notebook into a temp folder (set HF_HUB_OFFLINE, trace a scene with the built-in "scene-sd" model
   and 2 timesteps, hook the UNet to count calls, `ex = explore(tr); ex`, and a cell printing the kernel's view),
2. starts a Jupyter server from the server venv (free port, random token, temp config/data/runtime dirs, a kernelspec
   "dsdnb" pointing at the project's .venv python),
3. opens the notebook with Playwright driving the Debian Chromium, checks the page is the expected UI (classic: also
   that the ipywidgets nbextension `jupyter-js-widgets/extension` was loaded), runs all cells with the
   "Run > Run All Cells" menu (classic: "Cell > Run All"), waits for the widget, counts its controls (5 dropdowns,
   1 slider, 2 images), checks the images loaded,
4. selects another word and then another layer in the dropdowns and checks each time that the heat-map image changed
   (new image bytes and different pixels), re-runs the last cell (Ctrl+Enter) and checks the kernel saw the new values,
   redrew twice more and made no UNet call,
5. saves screenshots, checks they are not blank, and shuts the server (and its kernel) down, whatever happened.

It is opt-in (not part of the default test run) and CPU-only. One-time setup, a separate venv for the server and the
browser driver (the kernel stays the project's .venv, which already has ipykernel and ipywidgets):

    /usr/bin/python3 -m venv /tmp/jlab
    /tmp/jlab/bin/pip install jupyterlab notebook nbclassic playwright \\
        ipywidgets==8.1.9 jupyterlab_widgets==3.0.17 widgetsnbextension==4.0.16

The widget packages give the server the ipywidgets front end (the `@jupyter-widgets/jupyterlab-manager` lab extension,
used by both JupyterLab and Notebook 7, and, from widgetsnbextension, the `jupyter-js-widgets/extension` nbextension of
the classic Notebook, which its data files install and enable in the server venv; if they are missing the script
enables it in its temporary config/data dirs, never in a global config); without them the output shows only the
widget's text repr. Pin them to the versions in the kernel env (`.venv/bin/pip list | grep -i widget`). nbclassic is
optional: without it the classic pass is skipped with a message, not failed. No Playwright browser download is needed:
the script launches /usr/bin/chromium (Debian: `apt-get install chromium`).

Run it from the repository root (with any python: it re-executes itself with /tmp/jlab/bin/python when playwright is
not importable):

    HF_HUB_OFFLINE=1 python tests/live_jupyter_check.py --out /tmp/live_jupyter_check

Options: --ui all|lab|notebook|classic|both (default all = lab, notebook and classic; both = lab and notebook),
--jlab (server venv), --kernel-python, --chromium, --model, --steps, --timeout.
Exit status 0: every check passed in every UI that ran; 1: a check failed; 77: skipped (server venv, playwright or
Chromium missing; or --ui classic without nbclassic). The --out folder gets, per UI, `<ui>-1-rendered.png` (full page
after the run), `<ui>-map-0.png`, `<ui>-map-1-word.png`, `<ui>-map-2-layer.png` (the heat-map image before and after each control change),
`<ui>-widget.png` (the whole widget at the end), `<ui>-2-after.png` (the page at the end), `server-<ui>.log` (`<ui>`:
lab, notebook, classic), plus `summary.json`.
"""
import argparse, json, os, secrets, shutil, signal, socket, subprocess, sys, tempfile, time, urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SKIP = 77
NB_NAME = "live_check.ipynb"
KERNEL_NAME = "dsdnb"
# Per UI: the launcher in the server venv and the DOM the checks use (JupyterLab and Notebook 7 share the JupyterLab
# components; the classic Notebook of nbclassic has its own jQuery/CodeMirror 5 DOM and a `Jupyter` JS global).
_JP = dict(cell=".jp-Notebook .jp-CodeCell", output=".jp-OutputArea-output", editor=".jp-InputArea-editor",
           notebook=".jp-Notebook")
UIS = {
    "lab": dict(_JP, name="JupyterLab", launcher="jupyter-lab", package="jupyterlab"),
    "notebook": dict(_JP, name="Notebook 7", launcher="jupyter-notebook", package="notebook"),
    "classic": dict(name="classic Notebook (nbclassic)", launcher="jupyter-nbclassic", package="nbclassic",
                    cell="#notebook-container .cell.code_cell", output=".output_area .output_subarea",
                    editor=".input_area .CodeMirror", notebook="#notebook-container"),
}
UI_SETS = {"all": ["lab", "notebook", "classic"], "both": ["lab", "notebook"]}
WIDGETS_NBEXT = "jupyter-js-widgets/extension"


# ---------------------------------------------------------------------------------------------------- setup helpers
def notebook_json(model: str, steps: int) -> dict:
    "A small notebook: trace one scene, count UNet calls from then on, show the explorer, print the kernel's view."
    cells = [
        'import os, sys\nos.environ["HF_HUB_OFFLINE"] = "1"\nimport torch\ntorch.set_num_threads(1)\n'
        'print(f"LIVE_CHECK_KERNEL exe={sys.executable} pid={os.getpid()}")',
        "from dsd_nb.models import load_pipeline\nfrom dsd_nb.scoring import DSDScorer\n"
        "from dsd_nb.scenes import scene_example, render\nfrom dsd_nb.visualize import explore\n"
        f"pipe = load_pipeline({model!r})\n"
        'scene, cap, negs = scene_example("test", 0)\n'
        "captions = [cap.text()] + [c.text() for _, c in negs][:2]\n"
        f"sc = DSDScorer(pipe, steps={steps}, seed=0)\nwith sc.trace() as tr: sc.score(render(scene, 64), captions)\n"
        "unet_calls = [0]  # from here on, the explorer must not run the UNet\n"
        "pipe.unet.register_forward_pre_hook(lambda m, a: unet_calls.__setitem__(0, unet_calls[0] + 1))\n"
        "print(len(captions), 'captions,', len(tr.layers), 'layers')",
        "ex = explore(tr)\nex",
        'print(f"LIVE_CHECK_STATE renders={ex.renders} unet_calls={unet_calls[0]} word={ex.word.value} layer={ex.layer.value}")',
    ]
    return {"cells": [{"cell_type": "code", "execution_count": None, "id": f"cell{i}", "metadata": {}, "outputs": [],
                       "source": src} for i, src in enumerate(cells)],
            "metadata": {"kernelspec": {"name": KERNEL_NAME, "display_name": "dsd_nb (.venv)", "language": "python"},
                         "language_info": {"name": "python"}},
            "nbformat": 4, "nbformat_minor": 5}


def prepare_dirs(work: Path, kernel_python: str, model: str, steps: int) -> dict:
    "Notebook folder, isolated Jupyter config/data/runtime dirs, the kernelspec and the page config."
    d = {k: work / k for k in ("nb", "config", "data", "runtime")}
    for p in d.values(): p.mkdir(parents=True, exist_ok=True)
    (d["nb"] / NB_NAME).write_text(json.dumps(notebook_json(model, steps), indent=1))
    ks = d["data"] / "kernels" / KERNEL_NAME; ks.mkdir(parents=True)
    (ks / "kernel.json").write_text(json.dumps({
        "argv": [kernel_python, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "dsd_nb (.venv)", "language": "python",
        "env": {"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"},
        "metadata": {"debugger": False}}, indent=1))
    # no "get Jupyter news?" toast over the page; no update check
    lc = d["config"] / "labconfig"; lc.mkdir()
    (lc / "page_config.json").write_text(json.dumps({"disabledExtensions": {
        "@jupyterlab/apputils-extension:announcements": True}}))
    return d


def classic_widgets_nbextension(jlab: Path, dirs: dict) -> str:
    """Make sure the classic Notebook loads the ipywidgets nbextension (`jupyter-js-widgets/extension`).

    widgetsnbextension 4 installs it as data files into the server venv (share/jupyter/nbextensions/jupyter-js-widgets
    and etc/jupyter/nbconfig/notebook.d/widgetsnbextension.json), which nbclassic finds by itself. When those are
    missing, enable it only in this run's temporary data/config dirs (never in a global or user config)."""
    ext_js = jlab / "share" / "jupyter" / "nbextensions" / "jupyter-js-widgets" / "extension.js"
    enabled = False
    for f in sorted((jlab / "etc" / "jupyter" / "nbconfig" / "notebook.d").glob("*.json")):
        try: enabled |= json.loads(f.read_text()).get("load_extensions", {}).get(WIDGETS_NBEXT) is True
        except Exception: pass
    if ext_js.exists() and enabled:
        return "enabled by the widgetsnbextension data files in the server venv"
    r = subprocess.run([str(jlab / "bin" / "python"), "-c", "import widgetsnbextension, os; "
                        "print(os.path.join(os.path.dirname(widgetsnbextension.__file__), 'static'))"],
                       capture_output=True, text=True, timeout=60)
    static = Path(r.stdout.strip()) if r.returncode == 0 else None
    if static is None or not (static / "extension.js").exists():
        return "missing: widgetsnbextension is not installed in the server venv"
    shutil.copytree(static, dirs["data"] / "nbextensions" / "jupyter-js-widgets", dirs_exist_ok=True)
    nbc = dirs["config"] / "nbconfig"; nbc.mkdir(exist_ok=True)
    (nbc / "notebook.json").write_text(json.dumps({"load_extensions": {WIDGETS_NBEXT: True}}))
    return "enabled in the temporary config/data dirs of this run"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def api(base: str, token: str, path: str, method="GET", timeout=10):
    req = urllib.request.Request(f"{base}{path}", method=method, headers={"Authorization": f"token {token}"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        body = r.read()
        return json.loads(body) if body else None


class Server:
    "A Jupyter server (`jupyter-lab`, `jupyter-notebook` or `jupyter-nbclassic` from the server venv) in its own process group."
    def __init__(self, ui: str, jlab: Path, dirs: dict, log: Path):
        self.port, self.token = free_port(), secrets.token_hex(16)
        self.base = f"http://127.0.0.1:{self.port}"
        exe = jlab / "bin" / UIS[ui]["launcher"]
        env = dict(os.environ, JUPYTER_CONFIG_DIR=str(dirs["config"]), JUPYTER_DATA_DIR=str(dirs["data"]),
                   JUPYTER_RUNTIME_DIR=str(dirs["runtime"]), JUPYTER_PATH=str(dirs["data"]), HF_HUB_OFFLINE="1",
                   PATH=f"{jlab / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}", JUPYTER_PLATFORM_DIRS="1")
        env.pop("VIRTUAL_ENV", None); env.pop("PYTHONPATH", None)
        cmd = [str(exe), "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={self.port}",
               "--ServerApp.port_retries=0", f"--IdentityProvider.token={self.token}",
               f"--ServerApp.root_dir={dirs['nb']}", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
               "--LabApp.news_url=None"] + (["--allow-root"] if os.geteuid() == 0 else [])
        self.logf = open(log, "w")
        self.proc = subprocess.Popen(cmd, env=env, cwd=str(dirs["nb"]), stdout=self.logf, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        self.kernel_pids = set()

    def wait_ready(self, timeout=90):
        t0 = time.time()
        while time.time() - t0 < timeout:
            if self.proc.poll() is not None: raise RuntimeError(f"the server exited with status {self.proc.returncode}")
            try:
                api(self.base, self.token, "/api/status", timeout=3); return
            except Exception: time.sleep(0.5)
        raise RuntimeError(f"the server did not answer within {timeout}s")

    def shutdown(self):
        "Stop the kernels and the server through the REST API; then terminate what is left (only our own pids)."
        try:
            for k in api(self.base, self.token, "/api/kernels") or []:
                try: api(self.base, self.token, f"/api/kernels/{k['id']}", method="DELETE", timeout=20)
                except Exception: pass
        except Exception: pass
        try: api(self.base, self.token, "/api/shutdown", method="POST", timeout=10)
        except Exception: pass
        try: self.proc.wait(20)
        except subprocess.TimeoutExpired:
            try: os.killpg(self.proc.pid, signal.SIGTERM)
            except ProcessLookupError: pass
            try: self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL); self.proc.wait(10)
        for pid in self.kernel_pids:  # kernels run in their own session; normally already gone
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try: os.kill(pid, 0)
                except (ProcessLookupError, PermissionError): break
                os.kill(pid, sig); time.sleep(2)
        self.logf.close()


def image_stats(kernel_python: str, paths: list, pairs: list) -> dict:
    "Pixel statistics (std, distinct colours) of screenshots and the fraction of differing pixels between pairs (numpy/PIL of the kernel env)."
    code = r'''
import sys, json, numpy as np, PIL.Image
paths, pairs = json.loads(sys.argv[1])
load = lambda p: np.asarray(PIL.Image.open(p).convert("RGB")).astype(np.int16)
out = {"images": {}, "pairs": []}
for p in paths:
    a = load(p)
    out["images"][p] = dict(size=list(a.shape[:2]), std=float(a.std()),
                            colours=int(len(np.unique(a.reshape(-1, 3)[::3], axis=0))))
for p, q in pairs:
    a, b = load(p), load(q)
    if a.shape != b.shape: out["pairs"].append(dict(a=p, b=q, differ=1.0, note="sizes differ")); continue
    out["pairs"].append(dict(a=p, b=q, differ=float((np.abs(a - b).max(-1) > 8).mean())))
print(json.dumps(out))
'''
    r = subprocess.run([kernel_python, "-c", code, json.dumps([paths, pairs])], capture_output=True, text=True, timeout=120)
    if r.returncode: raise RuntimeError(f"image statistics failed: {r.stderr[-1500:]}")
    return json.loads(r.stdout)


# ---------------------------------------------------------------------------------------------------- browser part
JS_IMAGE_SIG = """async (img) => {
  const src = img.getAttribute('src') || '';
  let n = -1, h = 2166136261;
  try { const buf = new Uint8Array(await (await fetch(src)).arrayBuffer()); n = buf.length;
        for (let i = 0; i < buf.length; i++) { h ^= buf[i]; h = Math.imul(h, 16777619) >>> 0; } } catch (e) { h = String(e); }
  return {src: src.slice(0, 80), bytes: n, hash: h, w: img.naturalWidth, h: img.naturalHeight,
          png: n > 0 && src !== '' };
}"""


def run_all_cells(page, ui, log):
    "Run > Run All Cells through the menu bar (the same Lumino menu in JupyterLab and Notebook 7), Cell > Run All in classic."
    if ui == "classic":
        page.locator("#menus li.dropdown:has(> ul > #run_all_cells) > a.dropdown-toggle").click()  # "Cell"
        item = page.locator("#run_all_cells > a")
        item.wait_for(state="visible", timeout=10_000)
        item.click()
        log("clicked Cell > Run All"); return
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    item = page.locator(".lm-Menu-item:visible", has_text="Run All Cells").first
    item.wait_for(state="visible", timeout=10_000)
    item.click()
    log("clicked Run > Run All Cells")


def output_text(page, sel=UIS["lab"]["output"]) -> str:
    return "\n".join(page.locator(sel).all_inner_texts())


def wait_for_text(page, needle: str, timeout: float, server=None, sel=UIS["lab"]["output"]) -> str:
    t0 = time.time()
    while time.time() - t0 < timeout:
        txt = output_text(page, sel)
        if needle in txt: return txt
        if "Traceback" in txt: raise RuntimeError("a cell failed:\n" + txt[-3000:])
        if server is not None and server.proc.poll() is not None: raise RuntimeError("the server died")
        time.sleep(1)
    raise TimeoutError(f"{needle!r} did not appear within {timeout:.0f}s; outputs so far:\n{output_text(page, sel)[-3000:]}")


def state_line(txt: str) -> dict:
    lines = [l for l in txt.splitlines() if "LIVE_CHECK_STATE" in l]
    return dict(kv.split("=", 1) for kv in lines[-1].split()[1:] if "=" in kv) if lines else {}


def one_pass(ui: str, a, out: Path, pw) -> dict:
    "One UI: start a server, drive the notebook in Chromium, return checks and measurements."
    t0 = time.time()
    res = {"ui": ui, "checks": {}, "info": {}, "screenshots": []}
    ck, info = res["checks"], res["info"]
    U = UIS[ui]
    def log(msg): print(f"[{ui} {time.time() - t0:6.1f}s] {msg}", flush=True)
    work = Path(tempfile.mkdtemp(prefix=f"live_jupyter_{ui}_"))
    dirs = prepare_dirs(work, a.kernel_python, a.model, a.steps)
    if ui == "classic":
        info["widgets_nbextension"] = classic_widgets_nbextension(Path(a.jlab), dirs)
    server = Server(ui, Path(a.jlab), dirs, out / f"server-{ui}.log")
    browser = None
    try:
        server.wait_ready()
        log(f"server up on port {server.port}")
        if ui == "lab": path = f"/lab/tree/{NB_NAME}"
        elif ui == "notebook": path = f"/notebooks/{NB_NAME}"
        else:  # nbclassic serves under /nbclassic when Notebook 7 is installed next to it, at / otherwise
            path = f"/nbclassic/notebooks/{NB_NAME}"
            try: urllib.request.urlopen(f"{server.base}{path}?token={server.token}", timeout=20).close()
            except Exception: path = f"/notebooks/{NB_NAME}"
        info["url_path"] = path
        browser = pw.chromium.launch(executable_path=a.chromium, headless=True,
                                     args=["--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu"])
        info["chromium"] = browser.version
        page = browser.new_context(viewport={"width": 1400, "height": 2200}).new_page()
        console_errors = []
        page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
        page.on("pageerror", lambda e: console_errors.append(f"pageerror: {e}"))
        page.goto(f"{server.base}{path}?token={server.token}", wait_until="domcontentloaded", timeout=90_000)
        page.locator(U["cell"]).first.wait_for(state="visible", timeout=120_000)
        if ui == "classic":
            page.wait_for_function("() => window.Jupyter && Jupyter.notebook && Jupyter.notebook._fully_loaded", timeout=60_000)
            cl = page.evaluate("""() => ({version: Jupyter.version, body: document.body.className,
                                          jplab: !!document.querySelector('.jp-Notebook, #jupyter-config-data')})""")
            info["app"] = f"nbclassic {cl['version']}"
            ck[f"page is the {U['name']} UI"] = "notebook_app" in cl["body"].split() and not cl["jplab"]
        else:
            cfg = json.loads(page.locator("#jupyter-config-data").text_content() or "{}")
            info["app"] = f"{cfg.get('appName')} {cfg.get('appVersion')}"
            ck[f"page is the {U['name']} UI"] = cfg.get("appName") == ("JupyterLab" if ui == "lab" else "Jupyter Notebook")
        page.wait_for_function("(sel) => document.querySelectorAll(sel).length === 4", arg=U["cell"], timeout=30_000)
        ck["notebook opened (4 code cells)"] = True
        # wait (up to 90 s) until the server reports the notebook's kernel idle, so Run All is not racing its start;
        # /api/kernels can answer 500 while a kernel is still starting (jupyter_server: last_activity is None), so retry
        kernels_t0, ks = time.time(), None
        while time.time() - kernels_t0 < 90:
            try: ks = api(server.base, server.token, "/api/kernels")
            except Exception as e: info["kernels_api_retry"] = f"{type(e).__name__}: {e}"; ks = None
            if ks and ks[0].get("execution_state") == "idle": break
            time.sleep(1)
        info["kernel"] = (ks or [{}])[0].get("name")
        if ui == "classic":  # the ipywidgets front end of the classic Notebook is an nbextension loaded by requirejs
            try:
                page.wait_for_function("(e) => window.requirejs && requirejs.defined('nbextensions/' + e)",
                                       arg=WIDGETS_NBEXT, timeout=30_000)
                loaded = True
            except Exception: loaded = False
            info["nbextensions_enabled"] = page.evaluate("() => (Jupyter.notebook.config.data || {}).load_extensions || null")
            ck[f"widgets nbextension loaded ({WIDGETS_NBEXT})"] = loaded
        log(f"kernel {info['kernel']} idle; running all cells")
        if ui != "classic": page.locator(U["notebook"]).first.click()
        run_all_cells(page, ui, log)

        txt = wait_for_text(page, "LIVE_CHECK_STATE", a.timeout, server, U["output"])
        kline = [l for l in txt.splitlines() if "LIVE_CHECK_KERNEL" in l][0]
        kinfo = dict(kv.split("=", 1) for kv in kline.split()[1:])
        server.kernel_pids.add(int(kinfo["pid"]))
        info["kernel_python"] = kinfo["exe"]
        ck["kernel is the project's .venv python"] = Path(kinfo["exe"]).absolute() == Path(a.kernel_python).absolute()
        log("all cells ran; waiting for the widget")

        box = page.locator(f"{U['output']} .jupyter-widgets.widget-vbox").first
        try: box.wait_for(state="visible", timeout=60_000)
        except Exception:
            info["widget_output_text"] = "\n".join(page.locator(U["cell"]).nth(2)
                                                   .locator(U["output"]).all_inner_texts())[:300]
            raise RuntimeError("no rendered ipywidgets VBox in the outputs (is the widgets front end installed "
                               f"in the server venv?); output: {info['widget_output_text']!r}")
        images = box.locator("img.widget-image")
        page.wait_for_function("([n, sel]) => document.querySelectorAll(sel).length >= n "
                               "&& [...document.querySelectorAll(sel)].every(i => i.complete && i.naturalWidth > 0)",
                               arg=[2, f"{U['output']} img.widget-image"], timeout=60_000)
        n_dd, n_sl, n_img = box.locator(".widget-dropdown select").count(), box.locator(".widget-slider").count(), images.count()
        labels = [l.strip() for l in box.locator(".widget-dropdown label").all_inner_texts()]
        info.update(dropdowns=n_dd, sliders=n_sl, images=n_img, dropdown_labels=labels)
        ck["widget rendered (ipywidgets VBox in the output)"] = True
        ck["5 dropdowns (caption, word, layer, timestep, head)"] = n_dd == 5 and labels == ["caption", "word", "layer", "timestep", "head"]
        ck["1 slider (opacity)"] = n_sl == 1
        ck["2 images (heat maps, contributions) loaded"] = n_img == 2
        n_rows = box.locator(".widget-html table tr").count()
        info["ranking_rows"] = n_rows
        ck["ranking table shown (header + 3 captions)"] = n_rows == 4
        page.wait_for_timeout(500)
        shot = out / f"{ui}-1-rendered.png"; page.screenshot(path=str(shot), full_page=True); res["screenshots"].append(str(shot))

        maps = images.nth(0)
        sig0 = maps.evaluate(JS_IMAGE_SIG)
        m0 = out / f"{ui}-map-0.png"; maps.screenshot(path=str(m0)); res["screenshots"].append(str(m0))
        info["map_before"] = sig0
        st0 = state_line(txt)

        def change(label, index, name):
            sel = box.locator(".widget-dropdown", has=page.locator(f"label:text-is('{label}')")).locator("select")
            opts = sel.locator("option").all_inner_texts()
            sel.select_option(index=index)
            log(f"{label}: selected {opts[index]!r} (of {len(opts)})")
            prev = info["map_before"] if name == "word" else info["map_after_word"]
            t1 = time.time()
            while time.time() - t1 < 60:
                sig = maps.evaluate(JS_IMAGE_SIG)
                if sig["hash"] != prev["hash"] and sig["bytes"] > 0: break
                time.sleep(0.3)
            page.wait_for_function("(i) => i.complete && i.naturalWidth > 0", arg=maps.element_handle(), timeout=10_000)
            info[f"map_after_{name}"] = sig
            info[f"{name}_option"] = opts[index]
            info[f"{name}_redraw_s"] = round(time.time() - t1, 2)
            p = out / f"{ui}-map-{1 if name == 'word' else 2}-{name}.png"; maps.screenshot(path=str(p)); res["screenshots"].append(str(p))
            return p, sig, prev

        m1, sig1, _ = change("word", 1, "word")
        ck["word change: new heat-map image bytes"] = sig1["hash"] != sig0["hash"] and sig1["bytes"] > 0
        m2, sig2, _ = change("layer", 1, "layer")
        ck["layer change: new heat-map image bytes"] = sig2["hash"] != sig1["hash"] and sig2["bytes"] > 0

        # re-run the last cell in place: the kernel must have seen both changes, redrawn twice, and run no UNet
        last = page.locator(U["cell"]).nth(3)
        last.locator(U["editor"]).click()
        page.keyboard.press("Control+Enter")
        t1 = time.time(); st1 = st0
        while time.time() - t1 < 60:
            outs = last.locator(U["output"])
            st1 = state_line(outs.first.inner_text()) if outs.count() else {}
            if st1 and st1.get("renders") != st0.get("renders"): break
            time.sleep(0.5)
        info["kernel_state_before"], info["kernel_state_after"] = st0, st1
        ck["kernel saw the new word and layer (comm round trip)"] = st1.get("word") == "1" and st1.get("layer") not in (None, "all")
        ck["kernel redrew twice, from the trace"] = int(st1.get("renders", 0)) == int(st0.get("renders", 0)) + 2
        ck["no UNet call after the trace"] = st1.get("unet_calls") == "0"
        page.wait_for_timeout(300)
        wshot = out / f"{ui}-widget.png"; box.screenshot(path=str(wshot)); res["screenshots"].append(str(wshot))
        shot2 = out / f"{ui}-2-after.png"; page.screenshot(path=str(shot2), full_page=True); res["screenshots"].append(str(shot2))

        stats = image_stats(a.kernel_python, [str(shot), str(shot2), str(m0), str(m1), str(m2)],
                            [[str(m0), str(m1)], [str(m1), str(m2)]])
        info["pixels"] = stats
        im = stats["images"]
        ck["page screenshot not blank (std > 20, > 50 colours)"] = all(im[str(p)]["std"] > 20 and im[str(p)]["colours"] > 50 for p in (shot, shot2))
        ck["heat-map image not blank (std > 20, > 50 colours)"] = all(im[str(p)]["std"] > 20 and im[str(p)]["colours"] > 50 for p in (m0, m1, m2))
        ck["word change: heat-map pixels changed (> 0.2%)"] = stats["pairs"][0]["differ"] > 0.002
        ck["layer change: heat-map pixels changed (> 0.2%)"] = stats["pairs"][1]["differ"] > 0.002
        widget_errors = [e for e in console_errors if "widget" in e.lower() or "comm" in e.lower()]
        info["console_errors"] = console_errors[-10:]
        ck["no widget/comm errors in the browser console"] = not widget_errors
    except Exception as e:
        ck["pass ran to the end"] = False
        res["error"] = f"{type(e).__name__}: {e}"
        try:
            p = out / f"{ui}-error.png"; page.screenshot(path=str(p), full_page=True); res["screenshots"].append(str(p))
        except Exception: pass
    finally:
        if browser is not None:
            try: browser.close()
            except Exception: pass
        server.shutdown()
        info["server_exit"] = server.proc.returncode
        shutil.rmtree(work, ignore_errors=True)
    res["seconds"] = round(time.time() - t0, 1)
    res["passed"] = bool(ck) and all(ck.values())
    return res


def versions(a) -> dict:
    def pkgs(py, names):
        code = ("import json, importlib.metadata as m\nout = {}\nfor n in %r:\n    try: out[n] = m.version(n)\n"
                "    except m.PackageNotFoundError: out[n] = None\nprint(json.dumps(out))") % (names,)
        r = subprocess.run([py, "-c", code], capture_output=True, text=True, timeout=60)
        return json.loads(r.stdout) if r.returncode == 0 else {"error": r.stderr[-300:]}
    srv = pkgs(str(Path(a.jlab) / "bin" / "python"), ["jupyterlab", "notebook", "nbclassic", "jupyter_server", "ipywidgets",
                                                       "jupyterlab_widgets", "widgetsnbextension", "playwright"])
    ker = pkgs(a.kernel_python, ["ipykernel", "ipywidgets", "jupyterlab_widgets", "widgetsnbextension", "comm"])
    return {"server_env": srv, "kernel_env": ker}


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="/tmp/live_jupyter_check", help="folder for screenshots, server logs and summary.json")
    ap.add_argument("--ui", choices=["lab", "notebook", "classic", "both", "all"], default="all",
                    help="all (default): lab, notebook and classic (classic is skipped when nbclassic is not in the "
                         "server venv); both: lab and notebook")
    ap.add_argument("--jlab", default="/tmp/jlab", help="venv with jupyterlab, notebook, playwright (and the widgets front end)")
    ap.add_argument("--kernel-python", default=str(ROOT / ".venv" / "bin" / "python"), help="python of the kernel (needs dsd_nb, ipykernel, ipywidgets)")
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--model", default="scene-sd", help="built-in model name for the trace")
    ap.add_argument("--steps", type=int, default=2, help="DSD timesteps of the trace")
    ap.add_argument("--timeout", type=int, default=300, help="seconds to wait for all cells to run, per UI")
    a = ap.parse_args(argv)
    jpy = Path(a.jlab) / "bin" / "python"
    try: import playwright.sync_api  # noqa: F401
    except ImportError:
        if jpy.exists() and Path(sys.executable).absolute() != jpy.absolute():
            os.execv(str(jpy), [str(jpy), str(Path(__file__).resolve()), *argv])
        print(f"SKIP: playwright is not importable and {jpy} does not exist (see the setup in this file's docstring)"); return SKIP
    uis, skipped = UI_SETS.get(a.ui, [a.ui]), {}
    classic_exe = Path(a.jlab) / "bin" / UIS["classic"]["launcher"]
    if "classic" in uis and not classic_exe.exists():
        skipped["classic"] = (f"nbclassic is not installed in the server venv ({classic_exe} not found); "
                              f"install it with `{Path(a.jlab) / 'bin' / 'pip'} install nbclassic`")
        print(f"SKIP classic: {skipped['classic']}")
        uis = [u for u in uis if u != "classic"]
        if not uis: return SKIP
    for p, what in [(jpy, "server venv"), *[(Path(a.jlab) / "bin" / UIS[u]["launcher"], UIS[u]["package"]) for u in uis],
                    (Path(a.chromium), "Chromium"), (Path(a.kernel_python), "kernel python")]:
        if not p.exists(): print(f"SKIP: {what} not found at {p} (see the setup in this file's docstring)"); return SKIP
    os.environ["HF_HUB_OFFLINE"] = "1"
    out = Path(a.out); out.mkdir(parents=True, exist_ok=True)
    from playwright.sync_api import sync_playwright
    t0 = time.time()
    results = []
    with sync_playwright() as pw:
        for ui in uis:
            results.append(one_pass(ui, a, out, pw))
    summary = {"seconds": round(time.time() - t0, 1), "out": str(out), "versions": versions(a), "passes": results,
               "skipped": skipped}
    summary["versions"]["chromium"] = next((r["info"].get("chromium") for r in results if r["info"].get("chromium")), None)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    print(json.dumps({"versions": summary["versions"], "seconds": summary["seconds"]}, indent=1))
    for r in results:
        print(f"\n== {r['ui']}: {'PASS' if r['passed'] else 'FAIL'} ({r['seconds']}s)")
        for k, ok in r["checks"].items(): print(("   ok   " if ok else "   FAIL ") + k)
        if r.get("error"): print("   error: " + r["error"][:2000])
        for s in r["screenshots"]: print("   screenshot: " + s)
    for u, why in skipped.items(): print(f"\n== {u}: SKIPPED ({why})")
    ok = bool(results) and all(r["passed"] for r in results)
    print(f"\n{'PASS' if ok else 'FAIL'}: " + ", ".join([f"{r['ui']} {'PASS' if r['passed'] else 'FAIL'}" for r in results]
                                                         + [f"{u} SKIPPED" for u in skipped])
          + f" in {summary['seconds']}s; details in {out / 'summary.json'}")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
