#!/usr/bin/env bash
# The wheelhouse bench/gpu_check.py needs on a GPU machine that has no package registry, into .whl/ (git ignores
# it; it travels with the working tree). That machine's image holds Python 3.12, torch 2.11 + CUDA, transformers,
# accelerate, peft, safetensors 0.8, huggingface-hub 1.33, numpy, pillow, regex, requests, filelock (and zipp, of a
# version not recorded); what diffusers needs beyond it: diffusers itself and importlib_metadata with its
# lazy-importer and zipp, each at the version of the environment this checkout's tests run in (pure-Python wheels).
# pip there resolves against the image, so a requirement the image does not meet fails the install at once,
# naming it: add it here. Run from anywhere:
#     bash bench/gpu_wheels.sh              # PYTHON=... picks the environment whose versions to take
# Then, on the GPU machine, from the repository root (docs/performance.md):
#     python3 -m pip install -q --no-index --find-links .whl diffusers \
#       && python3 -m pip install -q --no-deps --no-build-isolation --no-index . && python3 bench/gpu_check.py
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
WHEELS="diffusers importlib_metadata lazy-importer zipp"
pins=$("$PYTHON" -c 'import importlib.metadata as m, sys; print(" ".join(f"{n}=={m.version(n)}" for n in sys.argv[1:]))' $WHEELS)
rm -rf .whl
"$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux2014_x86_64 -d .whl $pins
ls .whl
echo "wheelhouse .whl: $(ls .whl | wc -l) wheels, $(du -sb .whl | cut -f1) bytes ($pins)"
