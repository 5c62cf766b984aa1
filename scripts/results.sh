#!/usr/bin/env bash
# Reproduces docs/results.md (issue 16): two teacher->student pairs on Fashion-MNIST, methods ce, kd, dkd, fitnet,
# fitnet_kd, reviewkd, ukd (project default) and ukd (unikd_paper settings), 3 seeds each; resumable (see
# scripts/results.py). About 2-3 hours on 2 CPU cores; run it in the background:
#   nohup bash scripts/results.sh > runs/results.log 2>&1 &
set -euo pipefail
cd "$(dirname "$0")/.."
python scripts/results.py run "$@"
python scripts/results.py report
