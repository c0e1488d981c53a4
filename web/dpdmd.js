// DP-DMD Studio: text on the nodes, where a user looks.
// - Student Loader: the student's metadata (family, steps, sigmas, method), read from GET /dpdmd/student when a
//   student is picked and from the node's output after a run.
// - Diversity: the Eq. 9 number of the last run; Hybrid Sampler: its network evaluations per image (the
//   nodes' `text` output; frontends draw no text on ordinary nodes by themselves).
// The text is a DOM widget (drawn in the canvas and in the Vue node view alike) that is never serialized, so
// workflows keep their widget values and queue the same prompt.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const LOADER = "DPDMDStudentLoader";
const TEXT_NODES = [LOADER, "DPDMDDiversity", "DPDMDHybridSampler", "DPDMDTeacherStudentSampler"]; // nodes whose output carries `text`
const TEXT = "dpdmd_text";
const LINE = 15;
const WIDTH = 380;

async function fetchInfo(name) {
  try {
    const res = await api.fetchApi(`/dpdmd/student?name=${encodeURIComponent(name)}`);
    const body = await res.json();
    return body.ok ? { text: body.text, error: false } : { text: body.error, error: true };
  } catch (e) {
    return { text: `could not read the student's metadata (${e})`, error: true };
  }
}

function textWidget(node) {
  const existing = node.widgets?.find((w) => w.name === TEXT);
  if (existing) return existing;
  const el = document.createElement("div");
  el.className = "dpdmd-text";
  el.style.cssText = "font: 12px/15px monospace; white-space: pre-wrap; overflow-wrap: anywhere; overflow: hidden;"
    + "padding: 2px 6px; box-sizing: border-box;";
  const widget = node.addDOMWidget(TEXT, "dpdmd_text", el, {
    serialize: false,
    hideOnZoom: false,
    getValue: () => el.textContent,
    setValue: () => {},
    getMinHeight: () => el.dpdmdRows * LINE + 8,
  });
  widget.serialize = false;
  return widget;
}

// Show `text` on the node, growing it to fit (about 7.3 px per monospace character at 12 px).
function showText(node, text, error = false) {
  const el = textWidget(node).element;
  el.textContent = text;
  el.style.color = error ? "#f77" : "#bbb";
  const width = Math.max(node.size[0], WIDTH);
  el.dpdmdRows = text.split("\n").reduce((n, l) => n + Math.max(1, Math.ceil((l.length * 7.3) / (width - 16))), 0);
  node.setSize([width, Math.max(node.size[1], node.computeSize([width, 0])[1])]);
  node.setDirtyCanvas(true, true);
}

function chain(proto, name, after) {
  const before = proto[name];
  proto[name] = function (...args) {
    const r = before?.apply(this, args);
    after.apply(this, args);
    return r;
  };
}

app.registerExtension({
  name: "dpdmd.nodeText",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (!TEXT_NODES.includes(nodeData.name)) return;
    const proto = nodeType.prototype;
    chain(proto, "onExecuted", function (message) {
      if (message?.text?.length) showText(this, String(message.text[0]));
    });
    if (nodeData.name !== LOADER) return;

    proto.dpdmdRefresh = async function () {
      const widget = this.widgets?.find((w) => w.name === "student_name");
      if (!widget?.value) return;
      const info = await fetchInfo(widget.value);
      showText(this, info.text, info.error);
    };
    chain(proto, "onNodeCreated", function () {
      const widget = this.widgets?.find((w) => w.name === "student_name");
      if (widget) {
        const callback = widget.callback;
        widget.callback = (...args) => {
          const v = callback?.apply(widget, args);
          this.dpdmdRefresh();
          return v;
        };
      }
      setTimeout(() => this.dpdmdRefresh(), 0); // after a loaded workflow has set the widget values
    });
  },
});
