#!/usr/bin/env bash
# Issue 31: each hand-made mutation of a core term must fail tests/test_core_terms.py.
# Run from the repository root on a clean tree: bash benchmarks/show_core_mutations.sh
# Each mutation is applied with sed, the test module runs, and the file is restored with git.
set -u
run() {  # run NAME FILE SED-EXPRESSION
    local name=$1 file=$2 expr=$3
    sed -i "$expr" "$file"
    if git diff --quiet -- "$file"; then echo "MUTATION NOT APPLIED: $name"; return 1; fi
    if python -m pytest -q -x -p no:cacheprovider tests/test_core_terms.py > /tmp/mut_$$.log 2>&1; then
        echo "SURVIVED: $name"
    else
        echo "killed:   $name ($(grep -m1 -o 'FAILED [^ ]*' /tmp/mut_$$.log))"
    fi
    git checkout -q -- "$file"
}
run "entropy Jacobian sign"  brgm_pyro/inference/engine.py 's/h = h - (ld.sum() if isinstance/h = h + (ld.sum() if isinstance/'
run "inverse-gamma exponent" brgm_pyro/inference/engine.py 's/- (alpha + 1) \* s.log()/- (alpha - 1) * s.log()/'
run "unweighted reliance moments" brgm_pyro/reliance.py 's/    if wt is None:/    if True:/'
run "learned-width kernel truncation" brgm_pyro/models/corruptions/superres.py 's/(t.abs() <= 4 \* s)/(t.abs() <= 3 * s)/'
run "learned-width kernel centre" brgm_pyro/models/corruptions/superres.py 's/\* factor + (factor - 1) \/ 2  # (out, size)/* factor + factor \/ 2  # (out, size)/;s/c = torch.arange(out, dtype=width.dtype, device=width.device) \* factor + (factor - 1) \/ 2/c = torch.arange(out, dtype=width.dtype, device=width.device) * factor + factor \/ 2/'
rm -f /tmp/mut_$$.log
