#!/usr/bin/env bash
# The embedded study behind results/embedded/: paper_main (3 seeds) and every ablation sweep, on this
# machine's cores. Idempotent: finished cells are skipped, interrupted ones resume, so it can be split
# across sessions (commit results/embedded/ in between; checkpoints are git-ignored).
set -uo pipefail
cd "$(dirname "$0")/.."
root=${1:-results/embedded}
for name in paper_main ablation_mechanism ablation_ordering ablation_gate sensitivity divergence_kl_tv \
            divergence_binary_topk position_diagnostics; do
    echo "== $(date -u +%FT%TZ) trh sweep $name"
    trh sweep "$name" --results "$root" --no-progress || echo "!! $name had failed cells"
done
echo "== $(date -u +%FT%TZ) all sweeps finished"
