"""Search the shapes teacher's default: does plain DMD lose modes where DP-DMD keeps them?

    python bench/shapes_setting.py --set teacher.guidance_scale=2.0 --set run.max_steps=200

Trains DMD and DP-DMD from the same seed, budget, data and noises (the demo's
config plus the overrides), measures both against the 30-step CFG teacher with
the decoder-counted metrics, and prints one line per model and the ratios
(docs/investigation.md records what was tried).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.paper_table import apply_override  # noqa: E402
from distill_core.config import resolve  # noqa: E402
from distill_core.demo import demo_config  # noqa: E402
from distill_core.evaluation.compare import compare  # noqa: E402
from distill_core.training.trainer import Trainer  # noqa: E402

KEYS = ("mode_coverage", "diversity", "validity", "mode_divergence_from_data")


def line(name: str, m: dict) -> str:
    return f"{name:8s} " + "  ".join(f"{k} {m[k]:.3f}" for k in KEYS)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--set", action="append", default=[], help="section.field=value (TOML value)")
    parser.add_argument("--methods", default="dmd,dpdmd")
    parser.add_argument("--work", default="", help="run folders (default: a temporary folder)")
    args = parser.parse_args(argv)
    work = Path(args.work or tempfile.mkdtemp(prefix="dpdmd-shapes-"))
    out: dict = {"overrides": args.set}
    for method in args.methods.split(","):
        cfg = demo_config(work / method, method=method)
        for assignment in args.set:
            apply_override(cfg, assignment)
        start = time.time()
        trainer = Trainer(cfg, progress=False)
        trainer.fit()
        trained = time.time() - start
        result = compare(resolve(cfg), trainer.teacher, trainer.sampling_student(), "cpu")
        out.setdefault("teacher", result["teacher"])
        out[method] = {**result["student"], "train_seconds": trained, "seconds": time.time() - start}
        print(line(method, out[method]) + f"  ({trained:.0f} s training, {time.time() - start:.0f} s in all)",
              flush=True)
    print(line("teacher", out["teacher"]))
    if "dmd" in out and "dpdmd" in out:
        print("dpdmd / dmd: " + "  ".join(f"{k} {out['dpdmd'][k] / max(out['dmd'][k], 1e-12):.2f}"
                                          for k in KEYS[:3]))
    (work / "result.json").write_text(json.dumps(out, indent=1))
    print(f"written {work / 'result.json'}")
    return out


if __name__ == "__main__":
    main()
