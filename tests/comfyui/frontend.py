"""ComfyUI's own frontend in headless Chromium: turn API prompts into UI workflows and back.

Requests to anything but the local server are aborted (the frontend also asks
for remote fonts and templates).
"""
from __future__ import annotations

import json
import shutil
from contextlib import contextmanager

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
COLUMN = 440  # x distance between graph depths
GAP = 40


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
            # ready = node definitions registered with this pack's web extension applied (it loads asynchronously)
            page.wait_for_function("window.app?.graph && window.LiteGraph?.registered_node_types?.DPDMDStudentLoader"
                                   "?.prototype?.dpdmdRefresh !== undefined", timeout=120_000)
            page.wait_for_load_state("networkidle")  # the app restores its start-up workflow asynchronously
            yield page
        finally:
            browser.close()


def ui_from_api(page, api: dict, name: str, note: str = "") -> dict:
    """Load an API prompt into the frontend, lay it out left to right by depth, add a note, return the UI workflow."""
    return json.loads(page.evaluate("""async ([api, name, column, gap, text]) => {
        await app.loadApiJson(api, name);
        const nodes = [...app.graph.nodes], depth = new Map();
        let start = 80;
        if (text) {  // a Note node (frontend-only, never queued) explains the example above the graph
            const note = LiteGraph.createNode("Note");
            note.widgets[0].value = text;
            note.pos = [60, 80];
            note.size = [860, 150];
            app.graph.add(note);
            start += 150 + gap + 30;
        }
        const d = (n) => {
            if (depth.has(n.id)) return depth.get(n.id);
            const ups = (n.inputs || []).filter((i) => i.link != null).map((i) => app.graph.getNodeById(app.graph.links[i.link].origin_id));
            const v = ups.length ? 1 + Math.max(...ups.map(d)) : 0;
            depth.set(n.id, v);
            return v;
        };
        const y = new Map();
        for (const n of [...nodes].sort((a, b) => a.id - b.id)) {
            if (n.type === "DPDMDStudentLoader") n.size = [Math.max(n.size[0], 380), n.size[1] + 90];  // metadata text
            for (const w of n.widgets || []) if (w.name === "control_after_generate") w.value = "fixed";
            const col = d(n), top = y.get(col) ?? start;
            n.pos = [60 + col * column, top];
            y.set(col, top + n.size[1] + gap + 30);
        }
        return JSON.stringify(app.graph.serialize());  // as the frontend exports it: undefined fields dropped
    }""", [api, name, COLUMN, GAP, note]))


def api_from_ui(page, workflow: dict) -> tuple[dict, list[str]]:
    """Load a UI workflow as a person would (drop it on the canvas): the prompt it queues and any alerts shown."""
    page.evaluate("() => document.querySelectorAll('.p-toast-message').forEach((e) => e.remove())")
    page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
    # a late start-up restore can still replace the graph: load again until the workflow is the one shown
    for _ in range(3):
        if page.evaluate("() => app.graph.nodes.length") == len(workflow["nodes"]):
            break
        page.wait_for_timeout(2000)
        page.evaluate("async (wf) => { await app.loadGraphData(wf); }", workflow)
    prompt = page.evaluate("async () => (await app.graphToPrompt()).output")
    alerts = page.evaluate("() => [...document.querySelectorAll('.p-toast-message')].map((e) => e.innerText)")
    return prompt, alerts
