"""The real app (``python app.py --demo``) driven by headless Chromium through Playwright."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port

CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
ROOT = Path(__file__).resolve().parent.parent
TABS = ("Text to image", "IP-Adapter", "SDNQ catalog", "Panorama perception", "Image to video", "LoRA stack")
TIMEOUT_MS = 60_000

pytestmark = [pytest.mark.skipif(not CHROMIUM.exists(), reason=f"chromium not found at {CHROMIUM}"),
              pytest.mark.xdist_group("browser")]  # one app and one browser for the module


def wait_for_http(url: str, proc: subprocess.Popen, timeout: float = 120.0) -> float:
    """Seconds until ``url`` answers 200; fails early if the server process died."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if proc.poll() is not None:
            raise RuntimeError(f"the app exited with code {proc.returncode} before serving {url}")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return time.monotonic() - t0
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.1)
    raise TimeoutError(f"{url} did not answer within {timeout:.0f} s")


@pytest.fixture(scope="module")
def app_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("browser") / "app.log"


@pytest.fixture(scope="module")
def app_url(models_dir, app_log):
    port = free_port()
    log_path = app_log
    cmd = [sys.executable, "app.py", "--demo", "--port", str(port), "--models-dir", str(models_dir),
           "--outputs-dir", str(log_path.parent / "outputs")]
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
    try:
        url = f"http://127.0.0.1:{port}/"
        try:
            wait_for_http(url, proc)
        except (RuntimeError, TimeoutError) as exc:
            pytest.fail(f"{exc}\n--- app log ---\n{log_path.read_text()[-4000:]}")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture
def page(app_url, app_log, request, tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            troubles = []  # what the browser saw go wrong: printed with a failing test, to say why it failed
            page.on("console", lambda m: m.type in ("error", "warning") and troubles.append(f"console {m.type}: {m.text}"))
            page.on("pageerror", lambda e: troubles.append(f"page error: {e}"))
            page.on("requestfailed", lambda r: troubles.append(f"request failed: {r.url} {r.failure}"))
            page.set_default_timeout(TIMEOUT_MS)
            # expect() polls until its condition holds; its 5 s default ceiling is too short for a busy machine,
            # where the page can still say "Loading..." after 5 s (seen at load 5 on 2 cores)
            sync_api.expect.set_options(timeout=TIMEOUT_MS)
            page.goto(app_url)
            page.locator("#app-header").wait_for(state="visible")  # the app is mounted: the event, not a sleep
            yield page
            if getattr(request.node, "failed_call", False):
                shot = tmp_path / "at-failure.png"
                page.screenshot(path=str(shot), full_page=True)
                print(f"screenshot: {shot}\nbrowser troubles:\n" + "\n".join(troubles[-30:] or ["none"]))
                print("--- app log ---\n" + app_log.read_text()[-4000:])
        finally:
            browser.close()


RUN_BUTTONS = {"Text to image": "#t2i-run", "IP-Adapter": "#ip-run", "SDNQ catalog": "#catalog-run",
               "Panorama perception": "#pano-run", "Image to video": "#i2v-run", "LoRA stack": "#lora-run"}


def show_tab(page, label: str) -> None:
    """Open a tab and wait until its run button shows. A click that lands while the page is still wiring its
    handlers can be lost (seen once in CI, on a loaded machine: the tab never opened); one more click then."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    tab, run = page.get_by_role("tab", name=label, exact=True), page.locator(RUN_BUTTONS[label])
    tab.click()
    try:
        run.wait_for(state="visible", timeout=TIMEOUT_MS / 4)
    except PlaywrightTimeout:
        print(f"the {label!r} tab had not opened after {TIMEOUT_MS / 4000:.0f} s: clicking it again")
        tab.click()
        run.wait_for(state="visible")


def pick_block_swap(page, prefix: str) -> None:
    """Open a tab's memory-mode widget and choose block swap."""
    page.locator(f"#{prefix}-memory").get_by_text("Memory mode").first.click()
    page.locator(f"#{prefix}-swap-mode input").click()
    page.get_by_role("option", name=re.compile("^block swap")).click()


def updated_text(page) -> str:
    """The panel's "updated HH:MM:SS" stamp (under load Gradio may show a pending timer next to it)."""
    found = re.findall(r"updated \d\d:\d\d:\d\d", page.locator("#vram-updated").inner_text())
    return found[-1] if found else ""


def test_page_tabs_run_and_vram_panel(page, tmp_path):
    from playwright.sync_api import expect

    expect(page.locator("#app-header")).to_contain_text("Demo mode")
    # the page is served before torch loads; the device line fills in once the engine has booted
    expect(page.locator("#app-header")).to_contain_text("no GPU found", timeout=TIMEOUT_MS)
    expect(page.locator("#vram-devices")).to_contain_text("System RAM", timeout=TIMEOUT_MS)
    expect(page.locator("#vram-summary")).to_contain_text("No models loaded yet")

    # every tab opens and shows its run button
    for label in TABS[1:] + TABS[:1]:
        show_tab(page, label)

    # the memory panel polls on its own: its timestamp moves
    first = updated_text(page)
    assert first, page.locator("#vram-updated").inner_text()
    deadline = time.monotonic() + 15
    while updated_text(page) == first and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    assert updated_text(page) != first, "the memory panel stopped polling"

    # a bad input names the field next to the run button, and the page stays usable
    page.locator("#t2i-run").click()
    expect(page.locator("#t2i-status")).to_contain_text("Prompt", timeout=TIMEOUT_MS)

    seed = page.locator("#t2i-seed input")
    expect(seed).to_have_value("0")
    page.locator("#t2i-seed").get_by_role("button", name="random").click()
    expect(seed).not_to_have_value("0")

    page.locator("#t2i-prompt textarea").fill("a lighthouse on a cliff at dusk")
    page.locator("#t2i-run").click()
    expect(page.locator("#t2i-output img").first).to_be_visible(timeout=120_000)
    expect(page.locator("#t2i-status")).to_contain_text("Done")
    expect(page.locator("#t2i-info")).to_contain_text(".png")
    expect(page.locator("#t2i-save-json")).to_be_visible()

    # after the run the ledger lists the model's modules
    expect(page.locator("#vram-summary")).to_contain_text("module(s) registered", timeout=TIMEOUT_MS)
    page.get_by_text("Loaded modules").click()
    expect(page.locator("#vram-modules")).to_contain_text("transformer", timeout=TIMEOUT_MS)
    expect(page.locator("#vram-modules")).to_contain_text("FLUX.1-dev/transformer")
    page.screenshot(path=str(tmp_path / "after-run.png"), full_page=True)

    # the memory mode: the plan line follows the selector, and a block-swap run reports what it measured
    expect(page.locator("#t2i-plan")).to_contain_text("none: every component resident")
    pick_block_swap(page, "t2i")
    expect(page.locator("#t2i-plan")).to_contain_text("block_swap: 0 of 4 blocks resident", timeout=TIMEOUT_MS)
    page.locator("#t2i-run").click()
    expect(page.locator("#t2i-plan")).to_contain_text("Measured", timeout=120_000)
    expect(page.locator("#t2i-status")).to_contain_text("Done")
    expect(page.locator("#vram-modules")).to_contain_text("of 4 blocks", timeout=TIMEOUT_MS)
    page.screenshot(path=str(tmp_path / "block-swap.png"), full_page=True)

def test_ipadapter_tab_runs_with_an_uploaded_reference(page, tmp_path):
    from PIL import Image
    from playwright.sync_api import expect

    reference = tmp_path / "reference.png"
    Image.new("RGB", (48, 48), (30, 160, 200)).save(reference)
    show_tab(page, "IP-Adapter")
    page.locator("#ip-prompt textarea").fill("a bird in the style of the reference")
    page.locator("#ip-run").click()  # no reference yet: the status line says which widget is missing
    expect(page.locator("#ip-status")).to_contain_text("Reference image", timeout=TIMEOUT_MS)
    page.locator("#ip-ref-0 input[type=file]").set_input_files(str(reference))
    expect(page.locator("#ip-ref-0 img").first).to_be_visible()
    page.locator("#ip-run").click()
    expect(page.locator("#ip-output img").first).to_be_visible(timeout=120_000)
    expect(page.locator("#ip-status")).to_contain_text("Done")
    expect(page.locator("#ip-info")).to_contain_text("IP-Adapter (flux) acted on")
    expect(page.locator("#ip-plan")).to_contain_text("Measured")  # the shared memory-mode widget reports the run
    page.get_by_text("Loaded modules").click()
    expect(page.locator("#vram-modules")).to_contain_text("InstantX/FLUX.1-dev-IP-Adapter/ip_layers", timeout=TIMEOUT_MS)
    expect(page.locator("#vram-modules")).to_contain_text("image_encoder")
    page.screenshot(path=str(tmp_path / "ipadapter-after-run.png"), full_page=True)


def _add_lora(page, name: str) -> None:
    page.locator("#lora-pick input").click()
    page.get_by_role("option", name=name).click()
    page.locator("#lora-add").click()


def test_lora_stack_build_reorder_disable_and_run(page):
    from playwright.sync_api import expect

    show_tab(page, "LoRA stack")
    expect(page.locator("#lora-empty")).to_be_visible()
    _add_lora(page, "qwen-style-a.safetensors (demo)")
    expect(page.locator("#lora-row-0-info")).to_contain_text("qwen-style-a")
    _add_lora(page, "qwen-kohya.safetensors (demo)")
    expect(page.locator("#lora-row-1-info")).to_contain_text("kohya")
    expect(page.locator("#lora-row-1-info")).to_contain_text("hits 8 of 34")

    page.locator("#lora-row-1-up").click()  # kohya first now
    expect(page.locator("#lora-row-0-info")).to_contain_text("qwen-kohya")
    expect(page.locator("#lora-row-1-info")).to_contain_text("qwen-style-a")
    page.locator("#lora-row-1-on input").uncheck()  # style-a off
    expect(page.locator("#lora-row-1-on input")).not_to_be_checked()

    page.locator("#lora-prompt textarea").fill("a paper boat on a pond")
    page.locator("#lora-run").click()
    expect(page.locator("#lora-output img").first).to_be_visible(timeout=120_000)
    expect(page.locator("#lora-status")).to_contain_text("Done")
    # the disabled entry is not even read (issue 31: an entry that will not compute costs nothing)
    expect(page.locator("#lora-status")).to_contain_text("1 load(s), 1 set_adapters")
    # same stack again, now in block swap: no LoRA work at all, and the LoRAs stream with their blocks
    pick_block_swap(page, "lora")
    expect(page.locator("#lora-plan")).to_contain_text("block_swap", timeout=TIMEOUT_MS)
    page.locator("#lora-run").click()
    expect(page.locator("#lora-status")).to_contain_text("none (stack unchanged)", timeout=120_000)
    expect(page.locator("#lora-plan")).to_contain_text("Measured")


def test_image_to_video_tab_runs_and_shows_a_video(page, tmp_path):
    from PIL import Image
    from playwright.sync_api import expect

    start = tmp_path / "start.png"
    Image.new("RGB", (80, 60), (30, 120, 200)).save(start)
    show_tab(page, "Image to video")
    page.locator("#i2v-run").click()  # no start image: the status line names it
    expect(page.locator("#i2v-status")).to_contain_text("Start image", timeout=TIMEOUT_MS)
    page.locator("#i2v-image input[type=file]").set_input_files(str(start))
    page.locator("#i2v-prompt textarea").fill("the sea, slow pan")
    expect(page.locator("#i2v-plan")).to_contain_text("Plan", timeout=TIMEOUT_MS)
    page.locator("#i2v-run").click()
    expect(page.locator("#i2v-video video")).to_be_visible(timeout=120_000)
    expect(page.locator("#i2v-status")).to_contain_text("Done")
    expect(page.locator("#i2v-info")).to_contain_text(".mp4")
    expect(page.locator("#i2v-last-frame")).to_be_visible()
    page.get_by_text("Loaded modules").click()
    expect(page.locator("#vram-modules")).to_contain_text("transformer_2", timeout=TIMEOUT_MS)  # both experts listed
    page.screenshot(path=str(tmp_path / "i2v.png"), full_page=True)


def test_perception_tab_offers_to_pad_a_panorama_that_is_not_two_to_one(page, tmp_path):
    from PIL import Image
    from playwright.sync_api import expect

    wide = tmp_path / "wide.png"
    Image.new("RGB", (300, 100), (90, 120, 150)).save(wide)
    show_tab(page, "Panorama perception")
    page.locator("#pano-input input[type=file]").set_input_files(str(wide))
    expect(page.locator("#pano-note")).to_contain_text("not an equirectangular 2:1", timeout=TIMEOUT_MS)
    expect(page.locator("#pano-pad")).to_be_visible()
    page.locator("#pano-pad").click()
    expect(page.locator("#pano-note")).to_contain_text("300×150 panorama", timeout=TIMEOUT_MS)
    expect(page.locator("#pano-pad")).to_be_hidden()


def test_perception_tab_shows_the_maps_and_the_3d_view(page, tmp_path):
    import numpy as np
    from PIL import Image
    from playwright.sync_api import expect

    pano = tmp_path / "pano.png"
    x = np.linspace(0, 2 * np.pi, 128)
    rgb = np.stack([np.sin(x), np.cos(x), np.sin(2 * x)], -1)[None].repeat(64, 0) * 0.4 + 0.5
    Image.fromarray((rgb * 255).astype(np.uint8)).save(pano)

    show_tab(page, "Panorama perception")
    page.locator("#pano-input input[type=file]").set_input_files(str(pano))
    expect(page.locator("#pano-note")).to_contain_text("128×64 panorama", timeout=TIMEOUT_MS)
    for label in ("Normal", "Albedo"):  # depth only: a short run
        page.locator("#pano-tasks").get_by_label(label).uncheck()
    page.locator("#pano-run").click()
    expect(page.locator("#pano-status")).to_contain_text("Done", timeout=180_000)
    expect(page.locator("#pano-maps img").first).to_be_visible()
    # the 3D view holds the .glb (headless Chromium has no WebGL to draw it, so its canvas is not checked)
    expect(page.locator("#pano-3d a[href$='-sphere.glb']")).to_be_attached(timeout=TIMEOUT_MS)
    expect(page.locator("#pano-files").get_by_role("row", name=re.compile(r"-sphere\.glb"))).to_be_visible()
    expect(page.locator("#pano-files").get_by_role("row", name=re.compile(r"-depth16\.png"))).to_be_visible()
    expect(page.locator("#pano-info")).to_contain_text("seam error")
    page.screenshot(path=str(tmp_path / "perception.png"), full_page=True)


def test_comfy_folder_settings_and_a_run_from_a_picked_file(page):
    """The demo app indexes its fake ComfyUI install: the settings field shows what it found, the Text to image
    picker lists the folder's files and a run from one of them lists its single-file pieces in the memory panel."""
    from playwright.sync_api import expect

    page.get_by_text("ComfyUI models folder").first.click()
    expect(page.locator("#comfy-status")).to_contain_text("usable")
    page.locator("#comfy-rescan").click()
    expect(page.locator("#comfy-status")).to_contain_text("from the cache")
    show_tab(page, "Text to image")
    page.locator("#t2i-model input").click()
    page.get_by_role("option", name=re.compile(r"^flux1-dev-tiny\.safetensors")).click()
    page.locator("#t2i-comfy").get_by_text("ComfyUI models folder").click()
    expect(page.locator("#t2i-comfy-files")).to_contain_text("Flux dev")
    page.locator("#t2i-prompt textarea").fill("a windmill")
    page.locator("#t2i-run").click()
    expect(page.locator("#t2i-status")).to_contain_text("Done", timeout=120_000)
    page.get_by_text("Loaded modules").click()
    expect(page.locator("#vram-modules")).to_contain_text("flux1-dev-tiny.safetensors/transformer", timeout=TIMEOUT_MS)


def test_comfy_export_from_a_tab_and_import_back(page, tmp_path):
    from playwright.sync_api import expect

    page.locator("#t2i-prompt textarea").fill("a comfy fox in the snow")
    page.locator("#t2i-seed input").fill("4242")
    page.locator("#t2i-comfy").get_by_text("ComfyUI workflow").first.click()
    page.locator("#t2i-comfy-export").click()
    expect(page.locator("#t2i-comfy-status")).to_contain_text("Exported", timeout=TIMEOUT_MS)
    expect(page.locator("#t2i-comfy-code")).to_contain_text("UNETLoader")  # the editor renders the top lines
    expect(page.locator("#t2i-comfy-code").get_by_role("button", name="Copy")).to_be_visible()
    with page.expect_download() as download:
        page.locator("#t2i-comfy-ui a").first.click()
    workflow = tmp_path / "workflow.json"
    download.value.save_as(workflow)
    assert '"version": 0.4' in workflow.read_text() and "a comfy fox" in workflow.read_text()

    page.locator("#t2i-prompt textarea").fill("something else")
    show_tab(page, "IP-Adapter")
    page.locator("#comfy-import-box").get_by_text("Import a ComfyUI workflow").first.click()
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    page.locator("#comfy-import input[type=file]").set_input_files(str(bad))
    expect(page.locator("#comfy-import-status")).to_contain_text("not valid JSON", timeout=TIMEOUT_MS)
    expect(page.locator("#ip-run")).to_be_visible()  # the tab unchanged, the server alive

    page.locator("#comfy-import input[type=file]").set_input_files(str(workflow))
    expect(page.locator("#comfy-import-status")).to_contain_text("Opened", timeout=TIMEOUT_MS)
    expect(page.locator("#t2i-run")).to_be_visible()
    expect(page.locator("#t2i-prompt textarea")).to_have_value("a comfy fox in the snow")
    expect(page.locator("#t2i-seed input")).to_have_value("4242")
