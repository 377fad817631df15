#!/usr/bin/env bash
# Creates the Python reference environment used by the parity tests and fixture generators:
# a project-local, git-ignored virtualenv (.venv-ref/ by default) with the pins below. libmlx in it is
# byte-identical to the one the Rust crate links (both are mlx-cpu 0.32.2 from PyPI).
# Idempotent: a stamp naming the pins makes a second run a no-op.
#
# Environment: ZAYA_REF_VENV  the venv directory (default <repo>/.venv-ref)
set -euo pipefail
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1

die() { echo "setup-python-ref: $*" >&2; exit 1; }

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/.." && pwd)
VENV=${ZAYA_REF_VENV:-$ROOT/.venv-ref}
PINS=("mlx[cpu]==0.32.2" "mlx-lm==0.32.2" "jang==2.5.50" "numpy==2.4.6" "safetensors==0.8.0" "jinja2==3.1.6"
      "transformers==5.24.0" "tokenizers==0.23.3" "openai==3.60.0" "selenium==4.38.0")
STAMP="$VENV/.zaya-pins-$(printf '%s\n' "${PINS[@]}" | sha256sum | cut -c1-16)"

if [ -f "$STAMP" ]; then echo "setup-python-ref: up to date in $VENV"; exit 0; fi

command -v python3 >/dev/null || die "python3 is missing; install Python >= 3.11"
python3 -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)' \
  || die "Python >= 3.11 is required by jang 2.5.50 and mlx-lm 0.32.2 (found $(python3 --version 2>&1))"
python3 -m venv --help >/dev/null 2>&1 || die "python3 has no venv module (Debian: apt-get install python3-venv)"

if "$VENV/bin/python" -m pip --version >/dev/null 2>&1; then
  echo "setup-python-ref: updating $VENV to the pins"
else
  echo "setup-python-ref: creating $VENV (about 1 minute)"
  rm -rf "$VENV"
  python3 -m venv "$VENV" || die "python3 -m venv failed (Debian: apt-get install python3-venv)"
fi
rm -f "$VENV"/.zaya-pins-*
"$VENV/bin/python" -m pip --version >/dev/null 2>&1 || die "the venv has no pip (Debian: apt-get install python3-venv)"
"$VENV/bin/python" -m pip install -q "${PINS[@]}" \
  || die "pip could not install ${PINS[*]} (no network to PyPI?)"
"$VENV/bin/python" -c 'import mlx.core as mx, jang_tools.zaya.model, mlx_lm; assert mx.__version__ == "0.32.2", mx.__version__' \
  || die "the reference environment does not import (mlx 0.32.2, jang_tools.zaya.model, mlx_lm)"
touch "$STAMP"
echo "setup-python-ref: done ($VENV)"
