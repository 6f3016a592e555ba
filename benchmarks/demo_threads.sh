#!/usr/bin/env bash
# Training speed of the demo's recipe (`sparseg demo`, dense) by CPU thread count and OpenMP wait policy, on
# the machine as it is and with one more core held by another process (`yes`): the README's thread table.
#   bash benchmarks/demo_threads.sh [STEPS]        # prints "case it/s" lines; check `uptime` before and after
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-60}
tmp=$(mktemp -d)
busy=
trap '[ -n "$busy" ] && kill "$busy"; rm -rf "$tmp"' EXIT
python - "$tmp" <<'PY'
import sys, yaml
from sparseg.demo import DEMO_RECIPES, _merge, demo_config
recipe = DEMO_RECIPES["dense"]
raw = _merge(demo_config(sys.argv[1], f"{sys.argv[1]}/run", iters=recipe.iters), recipe.config)
yaml.safe_dump(raw, open(f"{sys.argv[1]}/demo.yaml", "w"))
PY

measure() {  # LABEL ENV...: it/s of the demo's training step (batch 8, 64x64, no data workers)
    local label=$1
    shift
    env -u OMP_WAIT_POLICY -u OMP_NUM_THREADS "$@" python benchmarks/throughput.py --configs "$tmp/demo.yaml" \
        --batch 8 --steps "$steps" --warmup 5 --image-size 64 --set data.workers=0 --json "$tmp/row.json" > /dev/null
    python -c "import json; r = json.load(open('$tmp/row.json'))['rows'][0]; print(f'$label {1 / r[\"s/step\"]:.2f} it/s')"
}

for load in as-is one-core-busy; do
    if [ "$load" = one-core-busy ]; then
        yes > /dev/null &
        busy=$!
        sleep 1
    fi
    echo "# load: $load ($(uptime | sed 's/.*load average/load average/'))"
    measure "$load 1-thread" OMP_NUM_THREADS=1
    measure "$load 2-threads-wait-policy-unset" OMP_NUM_THREADS=2
    measure "$load 2-threads-PASSIVE" OMP_NUM_THREADS=2 OMP_WAIT_POLICY=PASSIVE
done
