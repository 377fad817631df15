#!/usr/bin/env bash
# Creates the Hugging Face transformers environment used by scripts/hf_side_by_side.py (zaya against
# transformers' upstream ZAYA model, PyTorch on the CPU): a project-local virtualenv (.venv-hf/ by
# default; keep it out of git, like .venv-ref/) with the pins below, from PyPI. torch 2.15.0 from PyPI
# is the CUDA build (about 5 GB with its nvidia-* wheels); it runs on the CPU as well, no GPU needed.
# Idempotent: a stamp naming the pins makes a second run a no-op.
#
# Environment: ZAYA_HF_VENV  the venv directory (default <repo>/.venv-hf)
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

die() { echo "setup-python-hf: $*" >&2; exit 1; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
VENV=${ZAYA_HF_VENV:-$ROOT/.venv-hf}
PINS=("torch==2.15.0" "transformers==5.24.0" "numpy==2.4.6" "safetensors==0.8.0")
STAMP="$VENV/.zaya-pins-$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -c1-16)"

if [ -f "$STAMP" ]; then echo "setup-python-hf: up to date in $VENV"; exit 0; fi

command -v python3 >/dev/null || die "python3 is missing; install Python >= 3.11"
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || die "Python >= 3.11 is required (found $(python3 --version 2>&1))"
python3 -m venv --help >/dev/null 2>&1 || die "python3 has no venv module (Debian: apt-get install python3-venv)"

if "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  echo "setup-python-hf: updating $VENV to the pins"
else
  echo "setup-python-hf: creating $VENV (downloads about 5 GB: torch's CUDA wheels; several minutes)"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
fi
rm -f "$VENV"/.zaya-pins-*
"$VENV/bin/python" -m pip --version >/dev/null 2>&1 || die "the venv has no pip (Debian: apt-get install python3-venv)"
"$VENV/bin/python" -m pip install -q "${PINS[@]}" \
  || die "pip could not install ${PINS[*]} (no network to PyPI?)"
"$VENV/bin/python" -c 'import torch, transformers
from transformers.models.zaya import ZayaConfig, ZayaForCausalLM
assert torch.__version__.split("+")[0] == "2.15.0", torch.__version__
assert transformers.__version__ == "5.24.0", transformers.__version__' \
  || die "the HF environment does not import (torch 2.15.0, transformers 5.24.0 with transformers.models.zaya)"
touch "$STAMP"
echo "setup-python-hf: done ($VENV)"
