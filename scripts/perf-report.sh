#!/usr/bin/env bash
# Re-runs every measurement of docs/performance.md and prints its results table (markdown).
#
#   bash scripts/perf-report.sh            # full-size bundle + side-by-side (about 10 minutes)
#   CRITERION=1 bash scripts/perf-report.sh   # also `cargo bench --bench model` (+ about 4 minutes)
#   PLAIN=1 bash scripts/perf-report.sh       # also the full-size plain-ops path, decode only (slow)
#
# The full-size synthetic bundle is $ZAYA_FULL_BUNDLE (default /work/zaya1-8b-synth), written once
# with `zaya synth --preset zaya1-8b` (temp dir + rename) when missing. Raw JSON goes to
# target/perf-report/. Run it on an otherwise idle machine where possible: the load average is
# recorded next to every timing.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=target/perf-report
mkdir -p "$OUT"
FULL=${ZAYA_FULL_BUNDLE:-/work/zaya1-8b-synth}
export ZAYA_REF_VENV=${ZAYA_REF_VENV:-$PWD/.venv-ref}

bash scripts/setup-mlx-linux.sh >/dev/null
cargo build --release 2>&1 | tail -1
ZAYA=target/release/zaya

if [ ! -f "$FULL/config.json" ]; then
  TMP="$FULL.tmp-$$"
  echo "writing the full-size synthetic bundle to $FULL (once, a few minutes)" >&2
  "$ZAYA" synth --preset zaya1-8b --out "$TMP" --force -q
  mv -T "$TMP" "$FULL" 2>/dev/null || rm -rf "$TMP"   # someone else may have written it meanwhile
fi

echo "== full size, prompt 128, 32 generated ==" >&2
"$ZAYA" bench --model "$FULL" -p 128 -g 32 -n 3 --json > "$OUT/full-p128.json"
echo "== full size, prompt 1024, 16 generated ==" >&2
"$ZAYA" bench --model "$FULL" -p 1024 -g 16 -n 3 --json > "$OUT/full-p1024.json"
echo "== full size, every weight touched first (worst-case peak RSS) ==" >&2
"$ZAYA" bench --model "$FULL" -p 128 -g 16 -n 1 --touch-all --json > "$OUT/full-touch.json"
if [ "${PLAIN:-0}" = 1 ]; then
  echo "== full size, plain ops, prompt 16, 8 generated ==" >&2
  "$ZAYA" bench --model "$FULL" -p 16 -g 8 -n 1 --kernels plain --json > "$OUT/full-plain.json"
fi
echo "== side by side with the Python reference ==" >&2
if [ -x "$ZAYA_REF_VENV/bin/python" ]; then
  "$ZAYA_REF_VENV/bin/python" scripts/side_by_side.py --pairs 3 -p 128 -g 16 --json "$OUT/side-by-side.json" >&2
else
  echo "no reference venv at $ZAYA_REF_VENV: side-by-side skipped (scripts/setup-python-ref.sh creates it)" >&2
fi
if [ "${CRITERION:-0}" = 1 ]; then
  cargo bench --bench model 2>&1 | grep -E "^[a-z_]+/|time:|change:" > "$OUT/criterion-model.txt" || true
fi

python3 scripts/perf_table.py "$OUT"
