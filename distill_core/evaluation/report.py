"""report.html: a self-contained page (images inlined) that tells how a run went.

Built from the run folder alone (its files that resolve inside it), so it can be
regenerated at any time: ``dpdmd report RUN_DIR``.
"""
from __future__ import annotations

import base64
import html
import io
import tomllib
from pathlib import Path

from ..config import METHODS
from ..errors import CheckpointError, ConfigError, shown
from ..families import family as family_row, native_guidance
from ..runfolder import RunFolder, atomic_write_text

STYLE = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222} img{max-width:100%}"
         " table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:4px 8px} .row{display:flex;gap:16px;"
         "flex-wrap:wrap;align-items:flex-start} pre{background:#f6f6f6;padding:8px;overflow:auto;font-size:12px}")


def png_img(data: bytes) -> str:
    """An <img> with the PNG inlined (the report is one self-contained file)."""
    return f'<img src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def pyplot():
    """matplotlib's pyplot on the Agg backend (no display needed)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def fig_png(fig) -> bytes:
    """The figure as PNG bytes; the figure is closed."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    pyplot().close(fig)
    return buf.getvalue()


def smooth(values: list[float], weight: float = 0.9) -> list[float]:
    """Exponential moving average (bias-corrected), as TensorBoard's smoothing slider."""
    out, avg = [], 0.0
    for i, v in enumerate(values):
        avg = weight * avg + (1 - weight) * v
        out.append(avg / (1 - weight ** (i + 1)))
    return out


def diversity_png(series: dict[str, list[dict]], teacher_diversity: float | None,
                  colors: dict[str, str] | None = None) -> bytes | None:
    """Diversity over steps: one line per named list of events (their 'eval' events), the teacher dashed."""
    lines = {name: [e for e in events if e.get("event") == "eval" and "diversity" in e]
             for name, events in series.items()}
    lines = {name: evals for name, evals in lines.items() if evals}
    if not lines:
        return None
    fig, ax = pyplot().subplots(figsize=(5, 3))
    for name, evals in lines.items():
        ax.plot([e["step"] for e in evals], [e["diversity"] for e in evals], marker="o", label=name,
                color=(colors or {}).get(name))
    warned = [e for events in series.values() for e in events if e.get("event") == "collapse_warning"]
    if warned:  # the collapse guard's warnings (training/collapse.py)
        ax.scatter([e["step"] for e in warned], [e["diversity"] for e in warned], marker="x", s=70, color="red",
                   zorder=3, label="collapse warning")
    if teacher_diversity is not None:
        ax.axhline(teacher_diversity, color="gray", ls="--", label="teacher")
    top = max([e["diversity"] for evals in lines.values() for e in evals]
              + ([teacher_diversity] if teacher_diversity else []))
    ax.set_ylim(0, top * 1.2)
    ax.set_xlabel("step")
    ax.set_ylabel("diversity (Eq. 9)")
    ax.legend(fontsize=8)
    return fig_png(fig)


def _teacher_line(config_text: str) -> str:
    """The teacher and its CFG, in the family's own convention too where it differs (Z-Image)."""
    try:
        t = tomllib.loads(config_text).get("teacher", {})
        family, scale = str(t["family"]), float(t["guidance_scale"])
        note, shift_note = native_guidance(family, scale), family_row(family).shift_note
    except (tomllib.TOMLDecodeError, KeyError, TypeError, ValueError, ConfigError):
        return ""
    shift = f"; shift {t['shift']:g}" if t.get("shift") is not None else (f"; {shift_note}" if shift_note else "")
    return (f"teacher: {family}, {t.get('num_steps', '?')} steps, CFG {scale:g} (uncond + s (cond - uncond)) "
            f"{note}".rstrip() + shift)


def curves(events: list[dict], teacher_diversity: float | None) -> tuple[bytes | None, bytes | None]:
    """Loss curves and diversity-over-steps pictures (PNG bytes) from the events."""
    steps = [e for e in events if e.get("event") == "step"]
    loss_png = None
    if steps:
        fig, axes = pyplot().subplots(1, 3, figsize=(12, 3))
        for ax, key, label in zip(axes, ("loss_dmd", "loss_div", "loss_fake"),
                                  ("DMD loss (student)", "diversity loss (first step)", "fake-score loss")):
            x, y = [e["step"] for e in steps], [e.get(key, 0.0) for e in steps]
            ax.plot(x, y, lw=0.6, alpha=0.4)
            ax.plot(x, smooth(y), lw=1.4, color="C0")
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("step", fontsize=8)
            ax.tick_params(labelsize=7)
        loss_png = fig_png(fig)
    return loss_png, diversity_png({"student": events}, teacher_diversity)


def num(value: float | None, fmt: str) -> str:
    """A valid-only number: None when no prompt had 2 valid samples (evaluation/valid_only.py)."""
    return "n/a" if value is None else fmt.format(value)


def cell(value, fmt: str, key: str) -> str:
    """A metrics table's cell: blank where a model lacks the number, n/a where no prompt had 2 valid samples,
    the number of such prompts for their list."""
    if key == "prompts_few_valid":
        return "" if value is None else str(len(value))
    if key in ("mode_coverage_valid", "diversity_valid"):
        return num(value, fmt)
    return "" if value is None else fmt.format(value)


def _metrics_table(metrics: dict) -> str:
    rows = [("diversity (Eq. 9, higher = more varied)", "diversity", "{:.4f}"),
            ("Frechet distance to held-out digits (lower = better)", "frechet_distance", "{:.2f}"),
            ("validity (share of samples of the prompt's class)", "validity", "{:.3f}"),
            ("blank share (no pixel above the ink level: faded to black)", "blank_share", "{:.3f}"),
            ("modes reached (coverage; digits: style clusters of the real digits)", "mode_coverage", "{:.3f}"),
            ("modes reached by the valid samples only", "mode_coverage_valid", "{:.3f}"),
            ("diversity (Eq. 9) of the valid samples only", "diversity_valid", "{:.4f}"),
            ("prompts with fewer than 2 valid samples (not in the valid-only rows)", "prompts_few_valid", "{}"),
            ("style histogram divergence from the teacher (KL, lower = closer)", "mode_divergence_from_teacher",
             "{:.3f}"),
            ("same noise, same style as the teacher (agreement)", "mode_agreement_with_teacher", "{:.3f}"),
            ("steps / NFEs", None, None), ("seconds per image", "seconds_per_image", "{:.5f}")]
    t, s = metrics.get("teacher", {}), metrics.get("student", {})
    out = ["<table><tr><th></th><th>teacher</th><th>student</th></tr>"]
    for label, key, fmt in rows:
        if key is None:
            vals = [f"{m.get('steps')} / {m.get('nfe')}" for m in (t, s)]
        elif key in t or key in s:
            vals = [cell(m.get(key), fmt, key) for m in (t, s)]
        else:
            continue
        out.append(f"<tr><td>{label}</td><td>{vals[0]}</td><td>{vals[1]}</td></tr>")
    out.append("</table>")
    r = metrics.get("ratios", {})
    if r:
        out.append("<p>" + "; ".join(f"{html.escape(k.replace('_', ' '))}: <b>{v:.2f}</b>" for k, v in r.items())
                   + "</p>")
    return "\n".join(out)


def write_report(run_dir: str | Path) -> Path:
    run = RunFolder(Path(run_dir))
    if not (run.config_path.is_file() or run.status_path.is_file()):
        raise CheckpointError(f"{shown(str(run_dir))} is not a run folder (no config.toml or status.json); give the "
                              "run.output_dir of a run")
    events = run.read_events()
    metrics = run.read_json(run.metrics_path)
    status = run.read_status()
    config = run.file(run.config_path)
    config_text = config.read_text(encoding="utf-8", errors="replace") if config else ""
    info = metrics.get("run", {})
    teacher_div = metrics.get("teacher", {}).get("diversity")
    loss_png, div_png = curves(events, teacher_div)
    grids = run.student_grids()
    method = METHODS.get(str(info.get("method")))
    title = f"{method.name if method else 'Distillation'} run"
    knobs = (f"k = {info.get('anchor_step', '?')}, lambda = {info.get('diversity_weight', '?')}, "
             if method is None or method.diversity else "")  # plain DMD has no anchor and no lambda
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{title} report</title><style>{STYLE}"
        "</style></head><body>",
        f"<h1>{title}: {html.escape(run.root.name)}</h1>",
        f"<p>state: <b>{html.escape(str(status.get('state', 'unknown')))}</b>, step {status.get('step', '?')} of "
        f"{status.get('max_steps', '?')}; method <b>{html.escape(str(info.get('method', '?')))}</b>, "
        f"{knobs}training time {info.get('train_seconds', '?')} s.</p>",
    ]
    teacher = _teacher_line(config_text)
    if teacher:
        parts.append(f"<p>{html.escape(teacher)}</p>")
    if info.get("teacher_loras"):  # merged into the teacher: the student's base, to load before its LoRA
        parts.append("<p>teacher LoRAs merged (in order): " + ", ".join(
            f"<b>{html.escape(x['name'])}</b> x {x['weight']:g} (sha256 {x['sha256'][:12]}...)"
            for x in info["teacher_loras"]) + "</p>")
    if metrics:
        parts += ["<h2>Teacher vs student (same prompts, same seeds)</h2>", _metrics_table(metrics)]
    teacher_grid = run.file(run.samples / "teacher.png")
    if teacher_grid and grids:
        parts += ["<h2>Seed grids</h2><p>Rows are prompts, columns seeds; the same noise in both grids.</p>",
                  "<div class='row'>", png_img(teacher_grid.read_bytes()), png_img(grids[-1].read_bytes()), "</div>"]
    if loss_png or div_png:
        parts.append("<h2>Training curves</h2>")
        parts += [png_img(p) for p in (loss_png, div_png) if p]
    if len(grids) > 1:
        picks = [grids[0], grids[len(grids) // 2], grids[-1]]
        parts += ["<h2>The student over training</h2><div class='row'>"] + [png_img(g.read_bytes()) for g in picks]
        parts.append("</div>")
    parts += ["<p>More: docs/results.md in the DP-DMD Studio repository compares DMD, DP-DMD and the no-detach "
              "ablation on the built-in teacher over several seeds.</p>",
              "<h2>Config</h2><pre>" + html.escape(config_text) + "</pre></body></html>"]
    atomic_write_text(run.report_path, "\n".join(parts))
    return run.report_path
