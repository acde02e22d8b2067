#!/usr/bin/env bash
# The horizon study behind results/horizon/: the pilot, the equal-budget tuning at each horizon
# (tune_h14 ... tune_h115, seeds 1000-1001) and the pre-registered study (horizon_confirm: CPPO,
# DPPO, GRPO tuned per horizon and PG-IS, 4 horizons x seeds 1-16), then the report. It refuses to
# start on a tree with uncommitted changes outside results/ (every cell records the commit that
# trained it; horizon_confirm's cells refuse a changed tree anyway). Idempotent: finished cells are
# skipped and interrupted ones resume, so it runs in parts (commit the finished cells in between:
# python scripts/stage_finished.py results/horizon && git commit). Each part prints how long it took.
#   bash scripts/run_horizon_study.sh [results root]
# Run it from its own checkout (git worktree add --detach ../study) so that editing code elsewhere
# never stops its cells.
set -uo pipefail
root=$(realpath -m "${1:-$(dirname "$0")/../results/horizon}")   # a relative root is the caller's
cd "$(dirname "$0")/.."
if [ -n "$(git status --porcelain --untracked-files=no -- . ':!results')" ]; then
    echo "run_horizon_study: tracked files outside results/ differ from commit $(git rev-parse --short HEAD);" \
         "commit or stash them first (git status)" >&2
    exit 2
fi
echo "== commit $(git rev-parse HEAD), results in $root"
failed=0
run() {
    local start=$SECONDS
    echo "== $(date -u +%FT%TZ) trh sweep $1"
    trh sweep "$1" --results "$root" --no-progress || { echo "!! $1 did not finish"; failed=1; }
    echo "== $1: this part took $(( (SECONDS - start) / 60 )) min $(( (SECONDS - start) % 60 )) s"
}
for name in horizon_pilot tune_h14 tune_h27 tune_h59 tune_h115 horizon_confirm; do
    run "$name"
done
echo "== $(date -u +%FT%TZ) report"
trh report "$root" || failed=1
echo "== $(date -u +%FT%TZ) done in $(( SECONDS / 60 )) min (failed: $failed)"
exit "$failed"
