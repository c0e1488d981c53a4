"""``dpdmd train`` and ``accelerate launch -m distill_core.train CONFIG``: the entry point of a training run.

    dpdmd train CONFIG                                   # one process
    accelerate launch -m distill_core.train CONFIG      # several GPUs or machines

The loop itself is distill_core.training.trainer; this module only reads the command line.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import load_config, load_run_config
from .errors import exit_code
from .training.trainer import train


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
        if args.output_dir:
            cfg.run.output_dir = args.output_dir
        elif folder is not None and Path(cfg.run.output_dir).resolve() != folder.resolve():
            print(f"note: {args.config} is the config of the run folder {folder} (moved or copied from "
                  f"{cfg.run.output_dir}); continuing the run there", file=sys.stderr)
            cfg.run.output_dir = str(folder)
        if args.max_steps is not None:  # 0 is refused by the config's checks, not ignored
            cfg.run.max_steps = args.max_steps
        print(f"run folder: {train(cfg, finish=not args.no_finish, restart=args.restart)}")

    return exit_code(command)


if __name__ == "__main__":
    sys.exit(main())
