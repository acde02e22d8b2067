#!/usr/bin/env bash
# The embedded study behind results/embedded/: equal-budget tuning on the discriminative setting
# (drift_s), Table 1 there on fresh seeds with the tuned arms, Figs. 5-6 at the tuned values, the
# stress setting's survival table, Fig. 2's position diagnostics, the evaluation-noise measurement
# and Fig. 3's batch, then the report. Idempotent: finished cells are skipped and interrupted ones
# resume, so it can be split across sessions (commit results/embedded/ in between; checkpoints are
# git-ignored); on the committed results a rerun trains nothing. The sweeps that read tune_drift's
# choices (tuned: tune_drift) refuse to start until its cells have all finished.
#   bash scripts/run_embedded_study.sh [results root] [--with-paper-columns]
# --with-paper-columns also reruns paper_main (the paper's four settings, 3 seeds; ≈ 2 h more).
set -uo pipefail
cd "$(dirname "$0")/.."
root=results/embedded
paper=0
for arg in "$@"; do
    case "$arg" in
        --with-paper-columns) paper=1 ;;
        *) root=$arg ;;
    esac
done
failed=0
run() {
    echo "== $(date -u +%FT%TZ) trh sweep $1"
    trh sweep "$1" --results "$root" --no-progress || { echo "!! $1 did not finish"; failed=1; }
}
run tune_drift
run drift_main
run drift_confirm
for name in ablation_mechanism ablation_ordering ablation_gate sensitivity divergence_kl_tv divergence_binary_topk \
            stress_survival position_diagnostics; do
    run "$name"
done
[ "$paper" = 1 ] && run paper_main
# evaluation noise of drift_s (merged into eval_noise.json beside the other settings'), once
if ! python -c "import json, sys; sys.exit('drift_s' not in json.load(open('$root/eval_noise.json')))" 2>/dev/null; then
    python scripts/eval_noise.py setting=drift_s --streams 30 --out "$root/eval_noise.json" || failed=1
fi
if ! grep -q '"setting": "drift_s"' "$root/fig3_batch.json" 2>/dev/null; then
    python scripts/fig3_batch.py --out "$root/fig3_batch.json" setting=drift_s || failed=1
fi
echo "== $(date -u +%FT%TZ) report"
trh report "$root" || failed=1
echo "== $(date -u +%FT%TZ) done (failed: $failed)"
exit "$failed"
