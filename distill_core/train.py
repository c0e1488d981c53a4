"""``dpdmd train`` and ``accelerate launch -m distill_core.train CONFIG``: the entry point of a training run.

    dpdmd train CONFIG                                   # one process
    accelerate launch -m distill_core.train CONFIG      # several GPUs or machines

The loop itself is distill_core.training.trainer; this module only reads the command line.
Exit codes: 0 trained (and finished, unless --no-finish); 2 bad input (one ``error:`` line); 128 + N stopped
by signal N (130 Ctrl-C, 143 SIGTERM) after checkpointing; the same command resumes.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import load_config, load_run_config
from .errors import exit_code
from .training.trainer import Trainer, run_trainer


def _own_run_folder(config_path: Path) -> Path | None:
    """The run folder a config.toml belongs to (the one a run wrote into its folder), else None."""
    folder = config_path.parent
    if config_path.name == "config.toml" and ((folder / "status.json").exists() or (folder / "checkpoints").is_dir()):
        return folder
    return None


def main(argv: list[str] | None = None) -> int:
    """``dpdmd train`` (the CLI hands it its arguments) and ``accelerate launch -m distill_core.train CONFIG``."""
    p = argparse.ArgumentParser(prog="dpdmd train", description="Run or resume a distillation from a TOML config.")
    p.add_argument("config")
    p.add_argument("--output-dir", help="override run.output_dir")
    p.add_argument("--max-steps", type=int, help="override run.max_steps")
    p.add_argument("--no-finish", action="store_true", help="skip export, evaluation and report at the end")
    p.add_argument("--restart", action="store_true", help="start over from step 0, deleting the run's checkpoints "
                   "(for a run whose checkpoints are all damaged)")
    args = p.parse_args(sys.argv[1:] if argv is None else argv)

    def command() -> None:
        folder = _own_run_folder(Path(args.config))
        cfg = load_config(args.config) if folder is None else load_run_config(args.config)
        if args.output_dir is not None:  # "" is refused by the config's checks, not ignored
            cfg.run.output_dir = args.output_dir
        elif folder is not None and Path(cfg.run.output_dir).resolve() != folder.resolve():
            print(f"note: {args.config} is the config of the run folder {folder} (moved or copied from "
                  f"{cfg.run.output_dir}); continuing the run there", file=sys.stderr)
            cfg.run.output_dir = str(folder)
        if args.max_steps is not None:  # 0 is refused by the config's checks, not ignored
            cfg.run.max_steps = args.max_steps
        trainer = Trainer(cfg, restart=args.restart)
        print(f"run folder: {run_trainer(trainer, finish=not args.no_finish)}")
        stopped_by.append(trainer.stop_signal)

    stopped_by: list[int | None] = []
    code = exit_code(command)
    return 128 + stopped_by[0] if code == 0 and stopped_by and stopped_by[0] else code


if __name__ == "__main__":
    sys.exit(main())
