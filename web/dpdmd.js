// DP-DMD Studio: shows a student's metadata (family, steps, sigmas, method) on the loader node,
// read from GET /dpdmd/student when a student is picked and from the node's output after a run.
import { app } from "../../scripts/app.js";
import { api } from "../../scripts/api.js";

const LOADER = "DPDMDStudentLoader";
const LINE = 15;

async function fetchInfo(name) {
  try {
    const res = await api.fetchApi(`/dpdmd/student?name=${encodeURIComponent(name)}`);
    const body = await res.json();
    return body.ok ? { lines: body.text.split("\n"), error: false } : { lines: [body.error], error: true };
  } catch (e) {
    return { lines: [`could not read the student's metadata (${e})`], error: true };
  }
}

function wrap(ctx, text, width) {
  const out = [];
  let line = "";
  for (const word of text.split(" ")) {
    const next = line ? `${line} ${word}` : word;
    if (line && ctx.measureText(next).width > width) {
      out.push(line);
      line = word;
    } else {
      line = next;
    }
  }
  if (line) out.push(line);
  return out;
}

app.registerExtension({
  name: "dpdmd.studentInfo",
  async beforeRegisterNodeDef(nodeType, nodeData) {
    if (nodeData.name !== LOADER) return;

    nodeType.prototype.dpdmdShow = function (info) {
      this.dpdmdInfo = info;
      const width = Math.max(this.size[0], 380);
      const rows = info.lines.reduce((n, l) => n + Math.max(1, Math.ceil((l.length * 7.3) / (width - 16))), 1);
      this.setSize([width, this.computeSize()[1] + rows * LINE]);
      this.setDirtyCanvas(true, true);
    };

    nodeType.prototype.dpdmdRefresh = async function () {
      const widget = this.widgets?.find((w) => w.name === "student_name");
      if (widget?.value) this.dpdmdShow(await fetchInfo(widget.value));
    };

    const onNodeCreated = nodeType.prototype.onNodeCreated;
    nodeType.prototype.onNodeCreated = function () {
      const r = onNodeCreated?.apply(this, arguments);
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
      return r;
    };

    const onExecuted = nodeType.prototype.onExecuted;
    nodeType.prototype.onExecuted = function (message) {
      onExecuted?.apply(this, arguments);
      if (message?.text?.length) this.dpdmdShow({ lines: String(message.text[0]).split("\n"), error: false });
    };

    const onDrawForeground = nodeType.prototype.onDrawForeground;
    nodeType.prototype.onDrawForeground = function (ctx) {
      onDrawForeground?.apply(this, arguments);
      const info = this.dpdmdInfo;
      if (!info || this.flags?.collapsed) return;
      ctx.save();
      ctx.font = "12px monospace";
      ctx.fillStyle = info.error ? "#f77" : "#bbb";
      const lines = info.lines.flatMap((l) => wrap(ctx, l, this.size[0] - 16));
      let y = this.size[1] - lines.length * LINE - 4;
      for (const line of lines) {
        ctx.fillText(line, 8, (y += LINE));
      }
      ctx.restore();
    };
  },
});
