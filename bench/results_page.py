"""Turn bench/paper_table.py's results into docs/results.md, plots and results.json."""
from __future__ import annotations

import json
import os
import statistics
from pathlib import Path

from PIL import Image

METRICS = [  # key, column title, format, higher is better
    ("diversity", "diversity (Eq. 9)", "{:.4f}", True),
    ("mode_coverage", "mode coverage", "{:.3f}", True),
    ("mode_divergence_from_teacher", "KL to teacher modes", "{:.3f}", False),
    ("mode_agreement_with_teacher", "same-noise agreement", "{:.3f}", True),
    ("frechet_distance", "Frechet distance", "{:.2f}", False),
    ("validity", "validity", "{:.3f}", True),
    ("blank_share", "blank share", "{:.3f}", False),
    ("mode_coverage_valid", "coverage, valid only", "{:.3f}", True),
    ("diversity_valid", "diversity, valid only", "{:.4f}", True),
    ("prompts_few_valid", "prompts < 2 valid", "{}", False),
    ("sec_per_step_median", "s / training step", "{:.3f}", False),
]
INVESTIGATION = Path(__file__).resolve().parent.parent / "docs" / "investigation.md"
LABEL = {"dmd": "DMD", "decoupled_dmd": "Decoupled-DMD", "dpdmd": "DP-DMD (DMD refine)",
         "dpdmd_decoupled": "DP-DMD (decoupled refine)", "no_detach": "DP-DMD, no detach"}


def _mean_std(values: list, fmt: str) -> str:
    """Mean ± std over seeds; a list (prompts_few_valid) counts its prompts, summed over seeds; a valid-only
    number a seed lacks (no prompt with 2 valid samples) is left out and the cell says how many seeds had one."""
    if values and isinstance(values[0], list):
        return str(sum(len(v) for v in values))
    have = [v for v in values if v is not None]
    if not have:
        return "n/a"
    note = f" ({len(have)} of {len(values)} seeds)" if len(have) < len(values) else ""
    if len(have) == 1:
        return fmt.format(have[0]) + note
    return f"{fmt.format(statistics.mean(have))} ± {fmt.format(statistics.stdev(have))}{note}"


def by_method(runs: dict) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for name, m in runs.items():
        out.setdefault(name.rsplit("_s", 1)[0], []).append(m)
    return out


def main_table(results: dict) -> list[str]:
    t = results["teacher"]
    head = "| model | NFE | " + " | ".join(title for _, title, _, _ in METRICS) + " |"
    lines = [head, "|" + "---|" * (len(METRICS) + 2)]
    lines.append(f"| teacher, {t['steps']} steps, CFG {t['guidance']:g} | {t['nfe']} | " + " | ".join(
        _mean_std([t[key]], fmt) if key in t else "" for key, _, fmt, _ in METRICS) + " |")
    for method, ms in by_method(results["runs"]).items():
        seeds = f"{len(ms)} seed{'s' if len(ms) > 1 else ''}"
        lines.append(f"| {LABEL.get(method, method)} ({seeds}) | {ms[0]['nfe']} | " + " | ".join(
            _mean_std([m[key] for m in ms], fmt) if key in ms[0] else "" for key, _, fmt, _ in METRICS) + " |")
    return lines


def targets(results: dict) -> list[str]:
    groups = by_method(results["runs"])
    if not {"dmd", "dpdmd"} <= groups.keys():
        return []

    def mean(method, key):
        return statistics.mean(m[key] for m in groups[method])

    t = results["teacher"]
    div_dmd, div_dp = mean("dmd", "diversity"), mean("dpdmd", "diversity")
    fd_dmd, fd_dp = mean("dmd", "frechet_distance"), mean("dpdmd", "frechet_distance")
    cov_dmd, cov_dp = mean("dmd", "mode_coverage"), mean("dpdmd", "mode_coverage")
    val_gap = mean("dpdmd", "validity") - mean("dmd", "validity")
    rows = [
        ("DP-DMD mode coverage / DMD's", cov_dp / cov_dmd, ">= 1.4", cov_dp / cov_dmd >= 1.4),
        ("DP-DMD diversity / DMD diversity", div_dp / div_dmd, ">= 1.4 (paper, SD3.5-M: 1.31)", div_dp / div_dmd >= 1.4),
        ("DP-DMD diversity / teacher diversity", div_dp / t["diversity"], ">= 0.85 (paper: 0.75)",
         div_dp / t["diversity"] >= 0.85),
        ("DP-DMD Frechet distance / DMD's", fd_dp / fd_dmd, "<= 1.10", fd_dp / fd_dmd <= 1.10),
        ("DP-DMD validity - DMD's (points of share)", val_gap, ">= -0.05", val_gap >= -0.05),
    ]
    for key, name in (("mode_coverage_valid", "mode coverage"), ("diversity_valid", "diversity")):
        dmd, dp = (statistics.mean(v) if (v := [m[key] for m in groups[g] if m.get(key) is not None]) else None
                   for g in ("dmd", "dpdmd"))
        if dmd and dp is not None:
            rows.append((f"DP-DMD {name} / DMD's, valid samples only", dp / dmd, ">= 1.3 (issue 28)", dp / dmd >= 1.3))
    if "no_detach" in groups:
        nd = mean("no_detach", "diversity")
        rows.append(("no-detach diversity / DP-DMD diversity", nd / div_dp, "< 1", nd < div_dp))
    cost = results.get("cost") or {}
    if cost:
        rows.append(("DP-DMD / DMD seconds per step", cost["step_time_ratio_dpdmd_over_dmd"], "<= 1.15",
                     cost["step_time_ratio_dpdmd_over_dmd"] <= 1.15))
        rows.append(("teacher / student sampling time", cost["sampling_speedup"], ">= 13", cost["sampling_speedup"] >= 13))
    out = ["| measure | this run | target | met |", "|---|---|---|---|"]
    out += [f"| {name} | {value:.3f} | {goal} | {'yes' if ok else 'no'} |" for name, value, goal, ok in rows]
    return out


def ablation_table(results: dict, prefix: str, title: str) -> list[str]:
    rows = {k: v for k, v in results.get("ablations", {}).items() if k.startswith(prefix)}
    if not rows:
        return []
    lines = [f"| {title} | " + " | ".join(t for _, t, _, _ in METRICS) + " |", "|" + "---|" * (len(METRICS) + 1)]
    for key, m in rows.items():
        lines.append(f"| {key.split('=')[1]} | " + " | ".join(_mean_std([m[k]], fmt) if k in m else ""
                                                             for k, _, fmt, _ in METRICS) + " |")
    return lines


def plots(results: dict, out: Path) -> list[str]:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made = []
    groups = by_method(results["runs"])
    t = results["teacher"]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.scatter([t["frechet_distance"]], [t["diversity"]], marker="*", s=200, color="k", label="teacher (60 NFE)")
    for i, (method, ms) in enumerate(groups.items()):
        ax.scatter([m["frechet_distance"] for m in ms], [m["diversity"] for m in ms], color=f"C{i}",
                   label=f"{LABEL.get(method, method)} (4 NFE)")
    ax.set_xlabel("Frechet distance to the data (lower = better quality)")
    ax.set_ylabel("diversity, Eq. 9 (higher = more varied)")
    ax.legend(fontsize=8)
    fig.savefig(out / "scatter.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    made.append("scatter.png")

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for i, (method, ms) in enumerate(groups.items()):
        curves = [dict(m["diversity_over_steps"]) for m in ms]
        steps = sorted(set.intersection(*(set(c) for c in curves)))  # the steps every seed evaluated
        mean = [statistics.mean(c[s] for c in curves) for s in steps]
        ax.plot(steps, mean, marker="o", color=f"C{i}", label=LABEL.get(method, method))
    ax.axhline(t["diversity"], color="k", ls="--", label="teacher")
    ax.set_xlabel("training step")
    ax.set_ylabel("diversity (Eq. 9, 9 seeds x 10 prompts)")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=8)
    fig.savefig(out / "diversity_over_steps.png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    made.append("diversity_over_steps.png")
    return made


def grids(work: Path, out: Path) -> str | None:
    names = ["teacher", *(f"{m}_s0" for m in LABEL)]
    paths = [work / "grids" / f"{n}.png" for n in names]
    paths = [p for p in paths if p.exists()]
    if len(paths) < 2:
        return None
    from distill_core.grids import side_by_side

    side_by_side([Image.open(p) for p in paths]).save(out / "grids.png")
    return "grids.png"


def write_results(results: dict, docs: Path, work: Path) -> Path:
    out = docs / "results"

    def rel(path: Path) -> str:  # links that work wherever --docs puts the page
        return os.path.relpath(path, docs).replace(os.sep, "/")
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(results, indent=1))
    meta = results["meta"]
    lines = ["# DP-DMD on the built-in teacher: does the paper's claim hold?", "",
             f"Generated by `{meta['command']}` on {meta['date']} ({meta['machine']}; {meta['wall_seconds']} s wall for "
             "this invocation, which reuses runs already trained in its work folder and trains the rest). "
             f"Every number below comes from that one invocation; `{rel(out / 'results.json')}` has them all. "
             f"How the setting was chosen, and what else was tried, is in [investigation.md]({rel(INVESTIGATION)}).", ""]
    a, s = meta["args"], meta["setting"]
    t = results["teacher"]
    lines += [f"Setting: the built-in shapes teacher ({t['steps']} Euler steps, CFG {t['guidance']:g}, flow shift "
              f"{s['shift']:g}) distilled into {s['student_steps']}-step students for {s['steps']} student updates "
              f"(each after {s['fake_updates']} fake-score updates), batch {s['batch']}, AdamW lr {s['lr']:g} "
              f"(fake score {s['fake_lr']:g}); DP-DMD "
              f"with k = {s['k']}, lambda = {s['lambda']:g}. Every model is sampled from the same noises: "
              f"{s['prompts']} prompts x {s['seeds']} seeds for diversity, x {a['samples']} for the rest.", ""]
    if results.get("runs"):
        lines += ["## Main table", ""] + main_table(results) + [""]
        lines += [("Counted by the shapes decoder: mode coverage is the share of a prompt's 8 modes (position x size) "
                   "the samples reach; KL to teacher modes: divergence of the mode histogram from the teacher's; "
                   "same-noise agreement: share of noises whose sample lands in the teacher's mode from that noise; "
                   "validity: share of samples that are a clean member of the prompt's class; blank share: samples "
                   "with no shape at all (faded to black; in no mode); coverage and diversity, valid only: the same "
                   "measures over the valid samples of each prompt (distill_core/evaluation/valid_only.py), prompts "
                   "with fewer than 2 valid samples left out and counted in the last column (summed over seeds)."), ""]
        tl = targets(results)
        if tl:
            lines += ["## Against the targets", ""] + tl + [""]
        for img in plots(results, out):
            lines += [f"![{img}](results/{img})", ""]
        g = grids(work, out)
        if g:
            shown = [LABEL[m] for m in LABEL if (work / "grids" / f"{m}_s0.png").exists()]
            lines += ["## Seed grids (same prompts, same seeds)", "", f"Left to right: teacher, {', '.join(shown)} "
                      "(training seed 0).", "", f"![grids](results/{g})", ""]
    for prefix, title in (("k=", "anchor step k"), ("lambda=", "lambda")):
        tab = ablation_table(results, prefix, title)
        if tab:
            lines += [f"## Ablation: {title} (DP-DMD, training seed 0)", ""] + tab + [""]
    cost = results.get("cost")
    if cost:
        lines += ["## Cost (measured in this run)", "",
                  "| measure | value |", "|---|---|",
                  f"| seconds per step, DMD | {cost['sec_per_step']['dmd']:.3f} |",
                  f"| seconds per step, DP-DMD (k = {cost['k']}) | {cost['sec_per_step']['dpdmd']:.3f} |",
                  f"| ratio DP-DMD / DMD | {cost['step_time_ratio_dpdmd_over_dmd']:.3f} |",
                  f"| autograd memory of a student update, ratio DP-DMD / DMD | "
                  f"{cost['memory_ratio_dpdmd_over_dmd']:.3f} |",
                  f"| teacher sampling, s / image (30 steps, CFG) | {cost['teacher_sec_per_image']:.5f} |",
                  f"| student sampling, s / image (4 steps) | {cost['student_sec_per_image']:.5f} |",
                  f"| sampling speed-up | {cost['sampling_speedup']:.1f}x |", "",
                  f"A step is 5 fake-score updates and one student update at batch {cost['batch']}; times are medians "
                  f"of {cost['rounds']} alternating rounds; memory counts the bytes autograd keeps for the backward pass "
                  "(the teacher's anchor rollout runs without gradient and adds none).", ""]
    path = docs / "results.md"
    path.write_text("\n".join(lines))
    print(f"wrote {path}")
    return path
