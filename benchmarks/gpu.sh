#!/usr/bin/env bash
# The GPU benchmark set: one command per benchmark, on one H100, under 8 minutes in all.
# Needs the `bench` extra (trl) in the same interpreter. Tables go to stdout; JSON to runs/.
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PY:-.venv/bin/python}"

"$PY" benchmarks/gpu_dpo.py --rounds 2 "$@"
"$PY" benchmarks/gpu_ppo.py --json runs/gpu_ppo.json
