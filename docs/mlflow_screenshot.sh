#!/usr/bin/env bash
# Screenshot of MLflow's run comparison, in a real (headless) browser against a real `mlflow ui`.
#   docs/mlflow_screenshot.sh STORE.db EXPERIMENT_KEY_A EXPERIMENT_KEY_B OUT.png
# The keys are anomem experiment keys (the DVC experiment names, or commit-params hashes): their
# experiment-level runs are compared. Needs chromium (Debian: apt-get install chromium).
set -euo pipefail
db=$(realpath "$1"); a=$2; b=$3; out=$(realpath -m "$4")
port=${PORT:-5077}
ids=$(python - "$db" "$a" "$b" <<'PY'
import json, sqlite3, sys
db, *keys = sys.argv[1:]
con = sqlite3.connect(db)
rows = con.execute(
    "select r.run_uuid, r.experiment_id, k.value from runs r join tags k on k.run_uuid = r.run_uuid and k.key = 'anomem.key' "
    "join tags l on l.run_uuid = r.run_uuid and l.key = 'anomem.level' and l.value = 'experiment'"
).fetchall()
found = {key: (run, exp) for run, exp, key in rows}
missing = [k for k in keys if k not in found]
if missing:
    sys.exit(f"no experiment run with anomem.key {missing}; have {sorted(found)}")
print(json.dumps([found[k][0] for k in keys], separators=(",", ":")), json.dumps(sorted({str(found[k][1]) for k in keys}), separators=(",", ":")))
PY
)
runs=${ids% *}; experiments=${ids#* }
MLFLOW_DISABLE_TELEMETRY=true mlflow ui --backend-store-uri "sqlite:///$db" --host 127.0.0.1 --port "$port" > /tmp/mlflow-ui.log 2>&1 &
ui=$!
trap 'kill $ui 2>/dev/null || true' EXIT
for _ in $(seq 60); do curl -sf "http://127.0.0.1:$port/health" > /dev/null && break; sleep 1; done
url="http://127.0.0.1:$port/#/compare-runs?runs=$(python -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$runs")&experiments=$(python -c 'import sys, urllib.parse; print(urllib.parse.quote(sys.argv[1]))' "$experiments")"
echo "$url"
chromium --headless=new --no-sandbox --disable-gpu --hide-scrollbars --window-size=1500,1500 \
  --virtual-time-budget=20000 --screenshot="$out" "$url" 2>/dev/null
echo "wrote $out"
