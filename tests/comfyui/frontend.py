"""ComfyUI's own frontend in headless Chromium: load, run and lay out workflows as a person sees them.

Requests to anything but the local server are aborted (the frontend also asks
for remote fonts and templates). Only the frontend's long-standing globals are
used (window.app, window.LiteGraph, app.api, app.extensionManager), so the same calls work on the
frontends of ComfyUI 0.3.75 (1.32) and 0.33 (1.49).
"""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
GAP = 40  # px between nodes, and between graph depths
TITLE = 30  # px of a node's title bar, above node.pos
RUN_MS = 300_000


@contextmanager
def frontend(url: str):
    """A page with the frontend loaded from ``url``; yields the Playwright page."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            page.route("**/*", lambda r: r.continue_() if r.request.url.startswith(url) else r.abort())
            page.goto(url)
            _wait_ready(page)
            yield page
        finally:
            browser.close()


def _wait_ready(page) -> None:
    # ready = node definitions registered with this pack's web extension applied (it loads asynchronously)
    page.wait_for_function("window.app?.graph && window.LiteGraph?.registered_node_types?.DPDMDStudentLoader"
                           "?.prototype?.dpdmdRefresh !== undefined", timeout=120_000)
    page.wait_for_load_state("networkidle")  # the app restores its start-up workflow asynchronously


def fresh(page) -> None:
    """Reload the app: no outputs of earlier runs (the frontend keeps them by node id, across workflows)."""
    page.reload()
    _wait_ready(page)


def load_api(page, api: dict, name: str) -> None:
    """Load an API prompt into the frontend (it builds the nodes, widgets and links); seeds stay as given."""
    page.evaluate("""async ([api, name]) => {
        await app.loadApiJson(api, name);
        for (const n of app.graph.nodes)
            for (const w of n.widgets || []) if (w.name === "control_after_generate") w.value = "fixed";
    }""", [api, name])


def load_ui(page, workflow: dict) -> None:
    """Load a UI workflow as a person would (drop it on the canvas)."""
    expected = sorted([str(n["id"]), n["type"]] for n in workflow["nodes"])
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
    # a late start-up restore can still replace the graph: load again until the workflow is the one shown
    for _ in range(3):
        if sorted(page.evaluate("() => app.graph.nodes.map((n) => [String(n.id), n.type])")) == expected:
            return
        page.wait_for_timeout(2000)
        page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
    raise AssertionError(f"the frontend does not show the workflow loaded ({len(expected)} nodes)")


def api_from_ui(page, workflow: dict) -> tuple[dict, list[str]]:
    """Load a UI workflow: the prompt it queues and any alerts shown."""
    page.evaluate("() => document.querySelectorAll('.p-toast-message').forEach((e) => e.remove())")
    load_ui(page, workflow)
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    alerts = page.evaluate("() => [...document.querySelectorAll('.p-toast-message')].map((e) => e.innerText)")
    return prompt, alerts


def run(page, free_cache: bool = True) -> None:
    """Queue the graph shown, as the Run button does; return once its outputs are drawn.

    With ``free_cache`` the server's caches are freed first, so every node runs again and sends its sampling
    previews (a cached node sends only its final outputs, and would not grow as on a user's first run).
    """
    error = page.evaluate("""async ([timeout, free]) => {
        if (free) await app.api.fetchApi("/free", {method: "POST", body: JSON.stringify({free_memory: true})});
        const done = new Promise((resolve) => {
            const timer = setTimeout(() => resolve("no result within " + timeout + " ms"), timeout);
            const finish = (value) => { clearTimeout(timer); resolve(value); };
            app.api.addEventListener("execution_success", () => finish(null), {once: true});
            app.api.addEventListener("execution_error", (e) => finish(JSON.stringify(e.detail)), {once: true});
        });
        await app.queuePrompt(0, 1);
        return await done;
    }""", [RUN_MS, free_cache])
    assert error is None, error
    # nodes grow to their images as these load and are drawn: wait until no node has changed size for a while
    sizes, still = None, 0
    for _ in range(60):
        page.evaluate("() => app.graph.setDirtyCanvas(true, true)")
        page.wait_for_timeout(500)
        now = page.evaluate("() => app.graph.nodes.map((n) => [...n.size])")
        still = still + 1 if now == sizes else 0
        sizes = now
        if still == 3:
            return
    raise AssertionError(f"node sizes still changing 30 s after the run: {sizes}")


def layout(page, note: str = "", note_size: tuple[int, int] = (860, 150)) -> None:
    """Lay the graph out left to right by depth at the nodes' current sizes, a Note above it (frontend-only)."""
    page.evaluate("""([text, noteSize, gap, title]) => {
        const nodes = [...app.graph.nodes].filter((n) => n.type !== "Note").sort((a, b) => a.id - b.id);
        let top = 80;
        if (text) {  // a Note node (never queued) explains the example above the graph
            const note = LiteGraph.createNode("Note");
            note.widgets[0].value = text;
            note.pos = [60, top];
            note.size = noteSize;
            app.graph.add(note);
            top += noteSize[1] + gap + title;
        }
        const depth = new Map();
        const d = (n) => {
            if (depth.has(n.id)) return depth.get(n.id);
            const ups = (n.inputs || []).filter((i) => i.link != null)
                .map((i) => app.graph.getNodeById(app.graph.links[i.link].origin_id));
            const v = ups.length ? 1 + Math.max(...ups.map(d)) : 0;
            depth.set(n.id, v);
            return v;
        };
        const columns = [];
        for (const n of nodes) (columns[d(n)] ||= []).push(n);
        let x = 60;
        for (const column of columns.filter(Boolean)) {
            let y = top;
            for (const n of column) {
                n.pos = [x, y];
                y += n.size[1] + gap + title;
            }
            x += Math.max(...column.map((n) => n.size[0])) + gap;
        }
        app.graph.setDirtyCanvas(true, true);
    }""", [note, list(note_size), GAP, TITLE])


def template_browser(page, names: list[str]) -> dict[str, tuple[int, int]]:
    """Open the frontend's template browser: {name: (width, height) of the preview image its card shows}."""
    page.evaluate("() => app.extensionManager.command.execute('Comfy.BrowseTemplates')")
    shown = page.wait_for_function("""(names) => {
        const out = {};
        for (const h of document.querySelectorAll("[role=dialog] h3")) {
            const name = h.textContent.trim();
            if (!names.includes(name)) continue;
            let card = h;  // the largest ancestor that holds this card's title only
            while (card.parentElement?.querySelectorAll("h3").length === 1) card = card.parentElement;
            const img = card.querySelector("img");
            if (!img?.complete || !img.naturalWidth) return null;
            out[name] = [img.naturalWidth, img.naturalHeight];
        }
        return names.every((n) => out[n]) ? out : null;
    }""", arg=names, timeout=60_000).json_value()
    return {k: tuple(v) for k, v in shown.items()}


def open_template(page, name: str, workflow: dict) -> None:
    """Click a template's card in the open browser, as a person would, and wait for its graph."""
    page.locator("[role=dialog] h3", has_text=name).first.click()
    expected = sorted([str(n["id"]), n["type"]] for n in workflow["nodes"])
    page.wait_for_function("(e) => JSON.stringify(app.graph.nodes.map((n) => [String(n.id), n.type]).sort())"
                           " === JSON.stringify(e)", arg=expected, timeout=30_000)


def workflow(page) -> dict:
    """The graph as the frontend exports it (undefined fields dropped)."""
    return json.loads(page.evaluate("() => JSON.stringify(app.graph.serialize())"))


def overlaps(page) -> list[tuple[str, str]]:
    """Pairs of nodes (titles) whose boxes, title bars included, overlap as drawn now."""
    return [tuple(p) for p in page.evaluate("""(title) => {
        const box = (n) => [n.pos[0], n.pos[1] - title, n.pos[0] + n.size[0], n.pos[1] + n.size[1]];
        const out = [], nodes = app.graph.nodes;
        for (let i = 0; i < nodes.length; i++) for (let j = i + 1; j < nodes.length; j++) {
            const [a, b] = [box(nodes[i]), box(nodes[j])];
            if (a[0] < b[2] && b[0] < a[2] && a[1] < b[3] && b[1] < a[3]) out.push([nodes[i].title, nodes[j].title]);
        }
        return out;
    }""", TITLE)]


def node_texts(page) -> dict[str, str]:
    """The pack's text on each node (web/dpdmd.js), by node title, where it is visible on the page."""
    return page.evaluate("""() => Object.fromEntries(app.graph.nodes.flatMap((n) => {
        const el = (n.widgets || []).find((w) => w.name === "dpdmd_text")?.element;
        return el && el.checkVisibility() && el.getBoundingClientRect().height > 0 ? [[n.title, el.textContent]] : [];
    }))""")


def fit_view(page, margins: tuple[int, int, int, int] = (80, 150, 40, 90)) -> None:
    """Zoom and pan so the whole graph fills the canvas inside ``margins`` (left, top, right, bottom: clear of
    the app's panels and overlays); a workflow saved now opens with this view."""
    page.evaluate("""([left, top, right, bottom, title]) => {
        const nodes = app.graph.nodes, ds = app.canvas.ds, canvas = app.canvas.canvas;
        const x0 = Math.min(...nodes.map((n) => n.pos[0])), y0 = Math.min(...nodes.map((n) => n.pos[1] - title));
        const x1 = Math.max(...nodes.map((n) => n.pos[0] + n.size[0]));
        const y1 = Math.max(...nodes.map((n) => n.pos[1] + n.size[1]));
        const w = canvas.clientWidth - left - right, h = canvas.clientHeight - top - bottom;
        ds.scale = Math.min(w / (x1 - x0), h / (y1 - y0), 1.25);
        ds.offset = [left / ds.scale - x0 + (w / ds.scale - (x1 - x0)) / 2,
                     top / ds.scale - y0 + (h / ds.scale - (y1 - y0)) / 2];
        app.graph.setDirtyCanvas(true, true);
    }""", [*margins, TITLE])
    page.wait_for_timeout(1000)


def screenshot(page, path: Path, size: tuple[int, int] = (800, 500),
               viewport: tuple[int, int] = (2400, 1500)) -> None:
    """The whole graph, fitted into a ``viewport`` large enough that the frontend draws every node's text at
    that zoom, cropped to its nodes, as a JPEG of at most ``size``."""
    import io

    from PIL import Image

    before = page.viewport_size
    page.set_viewport_size({"width": viewport[0], "height": viewport[1]})
    try:
        fit_view(page)
        shot = _graph_shot(page)
    finally:
        page.set_viewport_size(before)
    shot = Image.open(io.BytesIO(shot)).convert("RGB")
    shot.thumbnail(size, Image.LANCZOS)
    shot.save(path, "JPEG", quality=85)


def _graph_shot(page) -> bytes:
    box = page.evaluate("""(title) => {
        const nodes = app.graph.nodes, ds = app.canvas.ds, r = app.canvas.canvas.getBoundingClientRect();
        const sx = (x) => r.x + (x + ds.offset[0]) * ds.scale, sy = (y) => r.y + (y + ds.offset[1]) * ds.scale;
        const x0 = sx(Math.min(...nodes.map((n) => n.pos[0])) - 10);
        const y0 = sy(Math.min(...nodes.map((n) => n.pos[1] - title)) - 10);
        const x1 = sx(Math.max(...nodes.map((n) => n.pos[0] + n.size[0])) + 10);
        const y1 = sy(Math.max(...nodes.map((n) => n.pos[1] + n.size[1])) + 10);
        return {x: Math.max(x0, 0), y: Math.max(y0, 0), width: Math.min(x1, innerWidth) - Math.max(x0, 0),
                height: Math.min(y1, innerHeight) - Math.max(y0, 0)};
    }""", TITLE)
    return page.screenshot(clip=box)
