"""The demo's report.html: teacher, DMD and DP-DMD side by side.

Seed grids with each model's numbers under them, the mode histograms as bar charts
and diversity over training of both students, from the two run folders and the
demo's metrics.json alone (``write_demo_report`` can be rerun at any time).
"""
from __future__ import annotations

import html
from pathlib import Path

from ..config import Config
from ..runfolder import RunFolder, atomic_write_text
from .report import STYLE, cell, diversity_png, fig_png, num, png_img, pyplot

LABELS = {"teacher": "teacher", "dmd": "DMD", "dpdmd": "DP-DMD"}
COLORS = {"data": "0.6", "teacher": "C0", "DMD": "C3", "DP-DMD": "C2"}  # the same in every plot
EXPLANATION = (
    "Both students start from the teacher, see the same prompts and the same noises and train for the same "
    "number of steps; they differ in one thing. Plain DMD trains all four steps to match the teacher's "
    "distribution with a reverse-KL loss, which is mode-seeking: the student learns to send many noises to a "
    "few likely outcomes, so the rarer ways of drawing a prompt fade and the seeds of one row look alike. "
    "DP-DMD trains only the first step differently: it must land where the teacher's own trajectory from the "
    "same noise lands (the diversity loss, weight lambda, anchor step k), and its output is detached, so the "
    "DMD loss on the last steps sharpens the samples but can no longer move which mode a noise goes to. "
    "What the paper predicts: DP-DMD's grid keeps the variety of the teacher's grid, its mode histograms stay "
    "close to the teacher's (higher mode coverage) and its diversity stays higher during training, "
    "at about DMD's validity and the same 4 network evaluations per image. The line in bold below the ratios "
    "says what this run's numbers show: valid-only numbers count only samples that are a clean shape of their "
    "prompt, so they separate fewer modes from fewer valid images.")
SEED_NOTE = ("One training seed per student. How far plain DMD collapses varies from seed to seed, and with the "
             "machine (the order of floating-point sums changes a training trajectory): some DMD runs lose most "
             "modes, some none. docs/results.md measures five training seeds of each.")


def setting_line(cfg: Config) -> str:
    """The budget both students trained with, and DP-DMD's k and lambda (from the DP-DMD run's resolved config)."""
    o, m, t = cfg.optim, cfg.method, cfg.teacher
    return (f"Setting: {cfg.run.max_steps} student updates at batch {cfg.data.batch_size}, student lr "
            f"{o.student_lr:g}, fake-score lr {o.fake_lr:g} ({m.fake_updates} fake updates per student update), "
            f"teacher {t.num_steps} steps at CFG {t.guidance_scale:g}; DP-DMD with k = {m.anchor_step}, lambda = {m.diversity_weight:g}.")


def numbers(m: dict) -> str:
    """A model's headline numbers, one line (what the report prints under its grid)."""
    parts = [f"diversity {m['diversity']:.4f}" if "diversity" in m else "",
             f"mode coverage {m['mode_coverage']:.2f}" if "mode_coverage" in m else "",
             f"validity {m['validity']:.3f}" if "validity" in m else "",
             f"blank {m['blank_share']:.0%}" if "blank_share" in m else "",
             f"valid only: coverage {num(m['mode_coverage_valid'], '{:.2f}')}, diversity "
             f"{num(m['diversity_valid'], '{:.4f}')}" if "mode_coverage_valid" in m else "",
             f"{m['nfe']} NFE" if "nfe" in m else ""]
    return ", ".join(p for p in parts if p)


def grid_paths(runs: dict[str, Path]) -> dict[str, Path | None]:
    """The teacher's seed grid and each student's final one (same prompts, same seeds in every run)."""
    out: dict[str, Path | None] = {"teacher": RunFolder(runs["dmd"]).file("samples/teacher.png")}
    for who, root in runs.items():
        grids = RunFolder(root).student_grids()
        out[who] = grids[-1] if grids else None
    return out


def mode_bars_png(metrics: dict, prompts: list[str]) -> bytes | None:
    """Per prompt, each mode's share in the data, the teacher, DMD and DP-DMD (grouped bars)."""
    t = metrics["teacher"]
    if not all("mode_histogram" in metrics[who] for who in LABELS) or "data_histogram" not in t:
        return None
    series = {"data": t["data_histogram"], **{LABELS[who]: metrics[who]["mode_histogram"] for who in LABELS}}
    n = len(t["data_histogram"])
    cols = min(n, 5)
    rows = -(-n // cols)
    fig, axes = pyplot().subplots(rows, cols, figsize=(3.2 * cols, 2.6 * rows), squeeze=False)
    width = 0.8 / len(series)
    for i, ax in enumerate(axes.flat):
        if i >= n:
            ax.axis("off")
            continue
        names = t["mode_names"][i]
        for j, (label, hists) in enumerate(series.items()):
            ax.bar([m + (j - (len(series) - 1) / 2) * width for m in range(len(names))], hists[i], width,
                   label=label, color=COLORS[label])
        ax.set_xticks(range(len(names)), names, fontsize=6, rotation=30)
        ax.set_title(prompts[i] if i < len(prompts) else f"prompt {i + 1}", fontsize=9)
        ax.set_ylim(0, 1)
        ax.tick_params(axis="y", labelsize=6)
    axes.flat[0].set_ylabel("share of samples", fontsize=8)
    axes.flat[0].legend(fontsize=6)
    fig.tight_layout()
    return fig_png(fig)


def _table(metrics: dict) -> str:
    rows = [("diversity (Eq. 9, higher = more varied)", "diversity", "{:.4f}"),
            ("mode coverage (share of the prompts' modes reached)", "mode_coverage", "{:.3f}"),
            ("validity (share of samples of the prompt's class)", "validity", "{:.3f}"),
            ("blank share (no shape at all: faded to black)", "blank_share", "{:.3f}"),
            ("mode coverage of the valid samples only", "mode_coverage_valid", "{:.3f}"),
            ("diversity (Eq. 9) of the valid samples only", "diversity_valid", "{:.4f}"),
            ("prompts with fewer than 2 valid samples (left out of the valid-only numbers)", "prompts_few_valid",
             "{}"),
            ("mode histogram divergence from the data (KL)", "mode_divergence_from_data", "{:.3f}"),
            ("mode histogram divergence from the teacher (KL)", "mode_divergence_from_teacher", "{:.3f}"),
            ("same noise, same mode as the teacher", "mode_agreement_with_teacher", "{:.3f}"),
            ("network evaluations per image (NFE)", "nfe", "{}"),
            ("seconds per image", "seconds_per_image", "{:.5f}")]
    out = ["<table><tr><th></th>" + "".join(f"<th>{LABELS[w]}</th>" for w in LABELS) + "</tr>"]
    for label, key, fmt in rows:
        if any(key in metrics[w] for w in LABELS):
            cells = "".join(f"<td>{cell(metrics[w].get(key), fmt, key)}</td>" for w in LABELS)
            out.append(f"<tr><td>{label}</td>{cells}</tr>")
    return "\n".join(out + ["</table>"])


def ratio_line(metrics: dict) -> str:
    """DP-DMD over DMD on diversity and mode coverage, over all samples and over valid ones only."""
    d, p = metrics["dmd"], metrics["dpdmd"]
    parts = [f"{name} {p[key] / d[key]:.2f}x" for key, name in (
        ("diversity", "diversity"), ("mode_coverage", "mode coverage"),
        ("diversity_valid", "valid-only diversity"), ("mode_coverage_valid", "valid-only mode coverage"))
        if d.get(key) and p.get(key) is not None]
    return "DP-DMD over DMD: " + ", ".join(parts) if parts else ""


PAPER_MARGIN = 1.3  # valid-only coverage and diversity ratios that count as the paper's effect (issue 28)
VALIDITY_GAP = 0.10  # DMD this many points less valid than DP-DMD: its loss is mostly invalid samples
ALIKE = 1.1  # valid-only ratios below this, with no validity gap: DMD did not collapse on this training seed


def common_ratios(d: dict, p: dict) -> tuple[float | None, float | None, int | None]:
    """DP-DMD over DMD on valid-only coverage and diversity, over the prompts where both have 2 valid samples
    (their count when that is not every prompt); None where there are none or the numbers are missing."""
    per = [(d.get(f"{k}_per_prompt"), p.get(f"{k}_per_prompt")) for k in ("mode_coverage_valid", "diversity_valid")]
    if any(a is None or b is None for a, b in per):  # an evaluation from before the per-prompt lists
        return (*(p[k] / d[k] if d.get(k) and p.get(k) is not None else None
                  for k in ("mode_coverage_valid", "diversity_valid")), None)
    common = [i for i, (a, b) in enumerate(zip(*per[1])) if a is not None and b is not None]
    ratios = [sum(b[i] for i in common) / sum(a[i] for i in common) if common and sum(a[i] for i in common) else None
              for a, b in per]
    return ratios[0], ratios[1], (len(common) if len(common) < len(per[1][0]) else None)


def finding(metrics: dict, prompts: list[str]) -> str:
    """What this comparison shows, in words that follow its numbers: DMD's loss of variety among its valid
    samples (the paper's claim) or mostly invalid (blank, off-class) samples."""
    d, p = metrics["dmd"], metrics["dpdmd"]
    if "validity" not in d or "mode_coverage_valid" not in d:
        return ""
    gap = p["validity"] - d["validity"]
    cov, div, both = common_ratios(d, p)
    lost = [prompts[i] if i < len(prompts) else f"prompt {i + 1}" for i in d.get("prompts_few_valid", [])]
    words = []
    if gap >= VALIDITY_GAP:
        words.append(f"Most of what DMD loses here is valid samples: {1 - d['validity']:.0%} of its samples are not "
                     f"a clean shape of the prompt's class ({d.get('blank_share', 0):.0%} are blank), against "
                     f"{1 - p['validity']:.0%} for DP-DMD.")
    if lost:
        words.append(f"DMD draws fewer than 2 valid samples for {', '.join(repr(x) for x in lost)}; those prompts "
                     "are left out of its valid-only numbers.")
    if cov is not None and div is not None:
        paper = cov >= PAPER_MARGIN and div >= PAPER_MARGIN
        where = "" if both is None else f" (on the {both} prompts where both draw 2 or more)"
        words.append(f"Over valid samples only{where}, DP-DMD's mode coverage is {cov:.2f}x DMD's and its diversity "
                     f"{div:.2f}x"
                     + (": DMD's valid samples also cover fewer modes, the paper's effect." if paper else
                        f", below the {PAPER_MARGIN:g}x that would show the paper's effect (DMD keeping quality but "
                        "seeking fewer modes)" + (": what this run shows is DP-DMD avoiding DMD's fade to "
                                                  "invalid samples." if gap >= VALIDITY_GAP else ".")))
        if gap < VALIDITY_GAP and not lost and cov < ALIKE and div < ALIKE:
            words.append("Plain DMD did not collapse on this training seed: the two students are alike. Whether it "
                         "does depends on the seed (docs/results.md measures five).")
    return " ".join(words)


def write_demo_report(out: Path, runs: dict[str, Path], metrics: dict, prompts: list[str], setting: str) -> Path:
    """Write ``out``/report.html for the demo's two runs (``runs``: 'dmd' and 'dpdmd' run folders); ``setting``:
    the budget in words (``setting_line``)."""
    grids = grid_paths(runs)
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>DP-DMD demo: DMD vs DP-DMD</title>"
             f"<style>{STYLE} figure{{margin:0;flex:1;min-width:260px}} figcaption{{font-size:13px;padding:4px 0}}"
             "</style></head><body>",
             "<h1>DP-DMD demo: the teacher, DMD and DP-DMD</h1>",
             f"<p>{html.escape(EXPLANATION)}</p>",
             f"<p><b>{html.escape(ratio_line(metrics))}</b></p>",
             f"<p id='finding'><b>{html.escape(finding(metrics, prompts))}</b></p>",
             f"<p id='setting'>{html.escape(setting)}</p>",
             f"<p>{html.escape(SEED_NOTE)}</p>",
             "<h2>Seed grids</h2><p>Rows are prompts, columns seeds: the same noises in all three grids.</p>",
             "<div class='row' id='grids'>"]
    for who, label in LABELS.items():
        image = png_img(grids[who].read_bytes()) if grids[who] else "<p>(no grid)</p>"
        parts.append(f"<figure id='grid-{who}'>{image}<figcaption><b>{label}</b>: "
                     f"{html.escape(numbers(metrics[who]))}</figcaption></figure>")
    parts.append("</div>")
    parts += ["<h2>Numbers</h2>", _table(metrics)]
    bars = mode_bars_png(metrics, prompts)
    if bars:
        parts += ["<h2>Modes per prompt</h2><p>Each mode's share of a prompt's samples: the data, the teacher and "
                  "both students (same prompts, same seeds). A mode a student drops has a missing bar. A blank image (no "
                  "shape at all, faded to black) is in no mode: a model's bars for a prompt add up to one minus "
                  "its blank share there.</p>",
                  f"<div id='mode-bars'>{png_img(bars)}</div>"]
    curve = diversity_png({LABELS[w]: RunFolder(root).read_events() for w, root in runs.items()},
                          metrics["teacher"].get("diversity"), COLORS)
    if curve:
        parts += ["<h2>Diversity over training</h2>", f"<div id='diversity-curves'>{png_img(curve)}</div>"]
    links = ", ".join(f"<a href='{html.escape(root.name)}/report.html'>{LABELS[w]} run</a>" for w, root in runs.items())
    parts += [f"<p>Each student's own report (loss curves, its grids over training, config): {links}. Both run "
              "folders resume and open in the trainer UI.</p></body></html>"]
    path = Path(out) / "report.html"
    atomic_write_text(path, "\n".join(parts))
    return path
