"""JupyterLab, the lab's real interface, driven in a real browser.

Starts ``jupyter lab`` on loopback with a random token, opens ``00_tour`` (prepared
by papermill with ``scale="smoke"`` and an ``out_dir`` in a temporary folder) in
headless Chromium through Playwright, runs every cell from the Run menu, waits for the
kernel to finish, and checks what a student would see: no traceback on the page nor in the
saved notebook, every cell run, a slider widget that answers (moving it changes the
scene's caption through the kernel) and plots. A screenshot of the whole notebook goes
to ``build/browser/00_tour.png``.

Needs Debian's ``chromium`` (``make browser`` installs it as root: ``apt-get install -y chromium``)
and Playwright for Python (the ``test`` extra); Playwright drives the installed
browser, so nothing is downloaded. Without Chromium the test fails in CI and is
skipped elsewhere, naming the install command.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CHROMIUM = (shutil.which(os.environ["VFM_CHROMIUM"]) if os.environ.get("VFM_CHROMIUM")
            else shutil.which("chromium") or shutil.which("chromium-browser"))
INSTALL = "apt-get install -y chromium (as root; `make browser` does it), or set VFM_CHROMIUM to a Chromium binary"
SCREENSHOT = ROOT / "build" / "browser" / "00_tour.png"
RUN_TIMEOUT_S = 300  # the tour takes ~20 s on 2 free cores; this only bounds a hang

# JupyterLab user settings for the test: render every cell (no virtual scrolling, so the screenshot and the
# DOM queries see the whole notebook), start the notebook's kernel without asking, and no news or update checks
# (the machine may be offline).
LAB_SETTINGS = {
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none",
                                                                  "autoStartDefaultKernel": True},
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                       "checkForUpdates": False},
}
# JupyterLab 4 renders an error output (a traceback) with the stderr renderer: tell them apart by the traceback
TRACEBACKS_JS = """() => [...document.querySelectorAll('.jp-OutputArea-output')]
    .filter(e => e.getAttribute('data-mime-type') === 'application/vnd.jupyter.error'
                 || (e.getAttribute('data-mime-type') === 'application/vnd.jupyter.stderr'
                     && e.textContent.includes('Traceback (most recent call last)')))
    .map(e => e.textContent)"""
WIDGETS = ".jp-OutputArea-output .widget-slider"
IMAGES = ".jp-RenderedImage img"


def _missing_browser_message() -> str | None:
    try:
        import playwright  # noqa: F401
    except ImportError:
        return "Playwright for Python is missing: pip install -c constraints.txt -e '.[test]'"
    if CHROMIUM is None:
        return f"Chromium is not installed: {INSTALL}"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 60) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer {url} within {timeout} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def lab_server(tmp_path):
    """A JupyterLab server on loopback whose root holds the tour prepared at smoke scale."""
    if reason := _missing_browser_message():
        if os.environ.get("CI"):
            pytest.fail(f"the JupyterLab browser test cannot run: {reason}")
        pytest.skip(reason)
    root, home = tmp_path / "notebooks", tmp_path / "home"
    root.mkdir()
    settings = home / "lab-settings"
    for name, value in LAB_SETTINGS.items():
        path = settings / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    subprocess.run([str(BIN / "papermill"), "--prepare-only", "-p", "scale", "smoke",
                    "-p", "out_dir", str(tmp_path / "runs"), str(ROOT / "notebooks" / "00_tour.ipynb"),
                    str(root / "00_tour.ipynb")], check=True, capture_output=True)
    token, port = secrets.token_hex(16), _free_port()
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"),
           "JUPYTER_CONFIG_DIR": str(home / "config"), "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
           "JUPYTER_DATA_DIR": str(home / "data"), "IPYTHONDIR": str(home / "ipython"),  # no user kernels/profiles
           "JUPYTERLAB_SETTINGS_DIR": str(settings), "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
           "PYTHONPATH": str(ROOT)}
    log = tmp_path / "jupyter.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [str(BIN / "jupyter"), "lab", "--no-browser", "--allow-root", f"--port={port}",
             "--ServerApp.ip=127.0.0.1", f"--ServerApp.token={token}", f"--ServerApp.root_dir={root}",
             "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"],
            cwd=root, env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        base = f"http://127.0.0.1:{port}"
        _wait_for_server(f"{base}/api/status?token={token}", proc, log)
        yield f"{base}/lab/tree/00_tour.ipynb?token={token}", root / "00_tour.ipynb", log
    finally:
        proc.terminate()  # the server shuts its kernels down on SIGTERM
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _run_all_and_wait(page, timeout_s: float) -> None:
    """Run > Run All Cells once the kernel is connected, then wait until no cell is queued or running."""
    # the status bar reads "Python 3 (ipykernel) | Idle" only once the kernel answers; a run asked for
    # earlier races the kernel's start and can end in a "Select Kernel" dialog
    page.locator(".jp-StatusBar-TextItem", has_text="| Idle").wait_for(timeout=90_000)
    page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current").click()  # hide the file browser
    page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
    page.locator('.lm-Menu-item[data-command="runmenu:run-all"]').click()
    # every code cell gets an execution count ([3]:); a failing cell stops the run, leaving the rest blank
    page.wait_for_function(
        f"""() => {{
            const prompts = [...document.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(p => p.textContent);
            const busy = prompts.some(p => p.includes('*'));
            const done = prompts.length > 0 && prompts.every(p => /\\[\\d+\\]/.test(p));
            const failed = ({TRACEBACKS_JS})().length > 0;
            const idle = document.querySelector('.jp-Notebook-ExecutionIndicator[data-status="idle"]');
            return !busy && idle && (done || failed);
        }}""", timeout=timeout_s * 1000, polling=500)


def _slider_changes_caption(page) -> bool:
    """Type 5 into the scene browser's slider: the kernel's observer must answer with another caption."""
    caption = page.locator(".widget-html-content").first
    before = caption.inner_text()
    readout = page.locator(".widget-slider .widget-readout").first
    readout.fill("5")
    readout.press("Enter")
    deadline = time.time() + 30
    while time.time() < deadline:
        if caption.inner_text() != before:
            return True
        page.wait_for_timeout(200)
    return False


def test_tour_runs_in_jupyterlab_in_chromium(lab_server):
    from playwright.sync_api import sync_playwright

    url, notebook, log = lab_server
    start = time.perf_counter()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(url)
            try:
                _run_all_and_wait(page, RUN_TIMEOUT_S)
            except Exception:
                SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(SCREENSHOT.with_name("00_tour_failed.png")))
                raise AssertionError(f"the notebook did not finish in JupyterLab; see "
                                     f"{SCREENSHOT.with_name('00_tour_failed.png')} and {log}") from None
            seconds = time.perf_counter() - start
            errors = page.evaluate(TRACEBACKS_JS)
            n_widgets, n_images = page.locator(WIDGETS).count(), page.locator(IMAGES).count()
            prompts = page.locator(".jp-CodeCell .jp-InputPrompt").all_inner_texts()
            page.keyboard.press("Control+s")  # the outputs as the front end holds them, saved to read back below
            page.wait_for_function("() => !document.querySelector('.lm-TabBar-tab.jp-mod-dirty')", timeout=30_000)
            slider_moves_scene = n_widgets > 0 and _slider_changes_caption(page)

            # the notebook scrolls inside the page: grow the window to the notebook's height, then shoot
            height = page.evaluate("""() => {
                const outer = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer');
                outer.scrollTop = 0;
                const cells = outer.querySelectorAll('.jp-Cell');
                return cells[cells.length - 1].getBoundingClientRect().bottom - outer.getBoundingClientRect().top;
            }""")
            page.set_viewport_size({"width": 1400, "height": min(int(height) + 150, 16000)})
            page.wait_for_timeout(500)
            SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(SCREENSHOT), full_page=True)
        finally:
            browser.close()
    summary = (f"JupyterLab ran 00_tour in Chromium in {seconds:.1f} s ({time.perf_counter() - start:.1f} s with "
               f"the screenshot): {len(prompts)} code cells, {n_widgets} slider widget(s) "
               f"({'live' if slider_moves_scene else 'dead'}), {n_images} plot(s); screenshot {SCREENSHOT}")
    print("\n" + summary)
    SCREENSHOT.with_suffix(".txt").write_text(summary + "\n")  # pytest hides the print unless -s
    assert not errors, f"{len(errors)} cell(s) show an error: {errors[0][-2000:]}"
    saved = nbformat.read(notebook, as_version=4)
    code = [c for c in saved.cells if c.cell_type == "code"]
    assert not [o for c in code for o in c.outputs if o.output_type == "error"], "the saved notebook holds an error"
    assert all(c.execution_count for c in code), "the saved notebook has cells that never ran"
    assert all(any(c.isdigit() for c in p) for p in prompts), f"cells left unexecuted: {prompts}"
    assert n_widgets >= 1, "no ipywidgets slider rendered"
    assert slider_moves_scene, "moving the slider did not change the scene's caption (no kernel round trip)"
    assert n_images >= 1, "no plot image rendered"


SITE_SCREENSHOT = ROOT / "build" / "browser" / "site_00_tour.png"


def test_the_site_links_every_chapter_and_shows_the_plots_of_a_run(tmp_path):
    """`make site` read in Chromium: built from a runs folder that holds one finished run (chapter 00 at smoke, by
    `vfm-lab run`), the index links every chapter; each page opens from its link, links back and says where its
    outputs come from; the run's page shows its plots inline and no traceback. A screenshot of that page goes to
    build/browser/site_00_tour.png."""
    from playwright.sync_api import sync_playwright

    from vfm_lab.reference import CHAPTERS
    from vfm_lab.site import build_site

    if reason := _missing_browser_message():
        if os.environ.get("CI"):
            pytest.fail(f"the site's browser test cannot run: {reason}")
        pytest.skip(reason)
    runs = tmp_path / "runs"
    env = {**os.environ, "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "PYTHONPATH": str(ROOT)}
    subprocess.run([str(BIN / "vfm-lab"), "run", "00", "-p", "scale=smoke", "--runs-dir", str(runs), "--quiet"],
                   check=True, capture_output=True, env=env, timeout=RUN_TIMEOUT_S)
    sources = build_site(runs, tmp_path / "site")
    assert sources["00_tour"].startswith(str(runs)) and all("not run yet" in s for c, s in sources.items() if c != "00_tour")
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                    "--disable-dev-shm-usage", "--no-first-run"])
        try:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            index = (tmp_path / "site" / "index.html").as_uri()
            page.goto(index)
            links = page.eval_on_selector_all("table a", "els => els.map(e => e.getAttribute('href'))")
            assert links == [f"{c}.html" for c in CHAPTERS]
            for chapter in CHAPTERS:
                page.goto(index)
                page.click(f"a[href='{chapter}.html']")
                page.wait_for_load_state()
                assert page.url.endswith(f"/{chapter}.html")
                banner = page.inner_text(".vfm-banner")
                assert page.locator(".jp-Cell").count() > 5  # the chapter's cells are there
                if chapter == "00_tour":
                    plots = page.locator(".jp-RenderedImage img").count()
                    assert plots >= 3 and "outputs of the run" in banner, (plots, banner)
                    assert "Traceback" not in page.inner_text("body")
                    SITE_SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
                    page.screenshot(path=str(SITE_SCREENSHOT), full_page=False)
                else:
                    assert "not run yet" in banner
                page.click(".vfm-banner a")
                page.wait_for_load_state()
                assert page.url == index
        finally:
            browser.close()
