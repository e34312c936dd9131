#!/bin/sh
# The per-step overhead benchmark at an earlier commit and at the working tree, side by side
# (alternating, twice each, so machine load hits both alike).
#   sh benchmarks/step_overhead_vs_commit.sh 8d04e2f~1 --generator builtin:faces64 --threads 1
# 8d04e2f~1 is the last commit before the inference core was opened to every latent site (issue #11).
set -e
REV=${1:-8d04e2f~1}
shift || true
DIR=$(mktemp -d)/before
git worktree add -f -q "$DIR" "$REV"
trap 'git worktree remove --force "$DIR"' EXIT
for i in 1 2; do
  echo "== $REV (round $i)"
  PYTHONPATH="$DIR" python "$DIR/benchmarks/bench_step_overhead.py" "$@"
  echo "== working tree (round $i)"
  PYTHONPATH="$PWD" python benchmarks/bench_step_overhead.py "$@"
done
