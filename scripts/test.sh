#!/usr/bin/env bash
# Runs every test: installs what the tests need (MLX for Rust, the Python reference environment,
# the headless browser of the chat-page test),
# then `cargo test --release` (unit, integration, parity and doc tests). Idempotent; needs root only
# to install the browser when it is missing.
# Extra arguments go to cargo test (e.g. `scripts/test.sh --test cca_conv`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup-mlx-linux.sh
bash scripts/setup-python-ref.sh
bash scripts/setup-browser.sh
exec cargo test --release "$@"
