#!/usr/bin/env bash
# Mutation testing of the core modules with mutmut (PyPI, pinned in constraints.txt), NOT in CI.
#
#   bash benchmarks/mutation_core.sh [MODULE ...]     (default: models/density.py)
#
# mutmut 2.x rewrites the source in place, so the run works on a copy of the tree under
# $MUT_DIR (default /tmp/brgm-mutation); each module runs only the tests that cover it, with one
# torch thread, under a wall-clock cap of $MUT_CAP seconds per module (default 1200). Results:
# `cd $MUT_DIR/<module> && mutmut results` and `mutmut show ID`. Scores are recorded in docs/testing.md.
set -eu
REPO=$(cd "$(dirname "$0")/.." && pwd)
MUT_DIR=${MUT_DIR:-/tmp/brgm-mutation}
MUT_CAP=${MUT_CAP:-1200}
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 TQDM_DISABLE=1
declare -A TESTS=(
  [brgm_pyro/models/density.py]="tests/test_density_terms.py tests/test_contracts.py tests/test_core_terms.py tests/test_core_exact.py::test_same_seed_same_result_and_terms_add_up tests/test_core_exact.py::test_monte_carlo_entropy_matches_analytic tests/test_core_exact.py::test_map_one_trace_objective_equals_the_elbo_of_a_point_guide"
  [brgm_pyro/models/discrepancy.py]="tests/test_discrepancy_values.py tests/test_discrepancy.py tests/test_coloured_discrepancy.py"
  [brgm_pyro/reliance.py]="tests/test_reliance_values.py tests/test_core_terms.py::test_reliance_prior_moments_are_the_factor_weighted_prior_moments tests/test_reliance.py"
  [brgm_pyro/inference/engine.py]="tests/test_engine_values.py tests/test_core_terms.py tests/test_engine_schedule.py tests/test_core_exact.py::test_same_seed_same_result_and_terms_add_up tests/test_core_exact.py::test_monte_carlo_entropy_matches_analytic tests/test_core_exact.py::test_map_one_trace_objective_equals_the_elbo_of_a_point_guide tests/test_guides.py"
)
# every corruption: the property tests over the registry, the exact values, the learned-width kernel
for f in base superres inpaint colorization deblur kernels compressed_sensing composition denoising; do
  TESTS[brgm_pyro/models/corruptions/$f.py]="tests/test_core_terms.py::test_learned_width_kernel_equals_the_fixed_kernel tests/test_physics.py tests/test_corruptions.py"
done
TESTS[brgm_pyro/models/corruptions/superres.py]="tests/test_superres_values.py ${TESTS[brgm_pyro/models/corruptions/superres.py]}"
TESTS[brgm_pyro/models/corruptions/inpaint.py]="tests/test_inpaint_values.py ${TESTS[brgm_pyro/models/corruptions/inpaint.py]}"
# the priors: every density against scipy, colinearity and cosines by hand, the factor-weighted moments' closed form, every term's density
for f in base colinearity gaussian; do
  TESTS[brgm_pyro/models/priors/$f.py]="tests/test_prior_values.py tests/test_model_parts.py::test_pairwise_cosines_and_colinearity tests/test_core_terms.py::test_reliance_prior_moments_are_the_factor_weighted_prior_moments tests/test_density_terms.py tests/test_reliance.py::test_colinearity_factor_is_importance_weighted tests/test_model_parts.py::test_every_prior_swaps_in_with_one_argument"
done
mods=("$@"); [ ${#mods[@]} -eq 0 ] && mods=(brgm_pyro/models/density.py)
for mod in "${mods[@]}"; do
  [ -n "${TESTS[$mod]:-}" ] || { echo "no covering tests listed for $mod"; exit 2; }
  name=$(basename "$mod" .py)
  case $name in base|__init__) name=$(basename "$(dirname "$mod")")_$name;; esac  # corruptions_base, priors_base
  dir=$MUT_DIR/$name
  if [ "${MUT_RESUME:-0}" != 1 ] || [ ! -d "$dir" ]; then  # MUT_RESUME=1: go on with the untested mutants
    rm -rf "$dir"; mkdir -p "$dir"
    (cd "$REPO" && git ls-files -z --cached --others --exclude-standard | xargs -0 cp --parents -t "$dir")
  fi
  cp "$REPO/$mod" "$dir/$mod"  # a run cut by the cap may leave its last mutant on disk
  cp "$REPO"/tests/*.py "$dir/tests/"
  cd "$dir"
  echo "== $mod: $(date -u +%H:%M:%S), tests: ${TESTS[$mod]}"
  timeout "$MUT_CAP" mutmut run --paths-to-mutate "$mod" --tests-dir tests --no-progress --simple-output \
     --runner "python -m pytest -x -q -p no:cacheprovider ${TESTS[$mod]}" || echo "(mutmut exit $?)"
  cp "$REPO/$mod" "$dir/$mod"
  mutmut results || true
  cd "$REPO"
done
