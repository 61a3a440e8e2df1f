#!/usr/bin/env bash
# Mutation testing of the core: mutmut changes one operator, constant or call at a time in
# critgrad/memory.py, critgrad/wrapper.py (the step), critgrad/_state.py and critgrad/options.py,
# runs the fast core tests on each change, and lists the changes no test noticed ("survived").
# Configuration: [tool.mutmut] in pyproject.toml; how to read the result: CONTRIBUTING.md.
#
#   bash scripts/mutation.sh                        # the four files (about an hour on 2 cores)
#   bash scripts/mutation.sh 'critgrad.memory.*'    # only the mutants whose names match
#
# Results are kept in mutants/ (ignored by git): a second run tests only the mutants of functions
# that changed since, and the tests that touch them. Remove mutants/ to start over.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c "import mutmut" >/dev/null 2>&1; then
  bash scripts/install.sh mutation
fi
# The console script, not `python -m mutmut`: mutmut forks its workers from its own main module.
MUTMUT="$(dirname "$(command -v "$PYTHON")")/mutmut"
export MPLBACKEND=Agg
if [ "$#" -eq 0 ]; then
  # The wrapper's step only (plan, apply, commit and their helpers), not its state_dict plumbing.
  set -- 'critgrad.memory.*' 'critgrad._state.*' 'critgrad.options.*' \
    'critgrad.wrapper.xǁCriticalGradientsǁ_memory_step__mutmut_*' \
    'critgrad.wrapper.xǁCriticalGradientsǁ_plan__mutmut_*' \
    'critgrad.wrapper.xǁCriticalGradientsǁ_memory_of__mutmut_*' \
    'critgrad.wrapper.xǁCriticalGradientsǁ_apply__mutmut_*' \
    'critgrad.wrapper.xǁCriticalGradientsǁ_commit__mutmut_*' \
    'critgrad.wrapper.x__norms__mutmut_*' 'critgrad.wrapper.x__spread__mutmut_*'
fi
"$MUTMUT" run --max-children "${MUTATION_JOBS:-2}" "$@"
# The score by file, over the mutants selected by the arguments.
"$MUTMUT" results --all True | "$PYTHON" scripts/mutation_score.py "$@"
