"""``accelerate launch tests/train_runs.py A.toml B.toml``: distill_core.train's entry point once per config, in
one launch (each launch costs the tests seconds of process start-up; the process group is kept between runs)."""
import sys

from distill_core.train import main

if __name__ == "__main__":
    sys.exit(max(main([path, "--no-finish"]) for path in sys.argv[1:]))
