#!/usr/bin/env bash
# The main job: builds zaya (installing MLX for Rust on first use) and generates text.
# Without arguments it runs on the built-in tiny demo bundle (random weights; made on first use in
# ${ZAYA_MLX_HOME:-${XDG_CACHE_HOME:-~/.cache}/zaya-mlx}/demo-tiny). Any arguments are passed to `zaya generate`, e.g.
#   scripts/demo.sh --model /path/to/ZAYA1-8B-JANGTQ4 -p "What is the capital of France?"
# Idempotent; needs no root.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup-mlx-linux.sh
cargo build --release --quiet
if [ $# -eq 0 ]; then
  set -- -p "Write a haiku about the sea." -m 48
fi
exec ./target/release/zaya generate "$@"
