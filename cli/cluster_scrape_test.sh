#!/bin/bash
# A real Prometheus server (Debian's) scrapes a running `chunkflowctl local`
# cluster (coordinator and 2 workers, each with /metrics) and answers queries
# for chunkflow_ metrics of both kinds of daemon. It also loads deploy/'s
# alert rules (with the job labels deploy/prometheus/prometheus.yml gives on
# Kubernetes): every rule evaluates on the live metrics, none fires on this
# healthy cluster, and every metric the rules and the Grafana dashboard name
# is one the daemons export. Skips (exit 0, visibly) where the prometheus
# package is not installed.
set -u
PROMETHEUS=/usr/bin/prometheus
PROMTOOL=/usr/bin/promtool
if [[ ! -x $PROMETHEUS || ! -x $PROMTOOL ]]; then echo "SKIPPED: no prometheus server"; exit 0; fi
BIN="$TEST_SRCDIR/chunkflow/cli/chunkflowctl"
ALERTS="$TEST_SRCDIR/chunkflow/deploy/prometheus/alerts.yml"
DASHBOARD="$TEST_SRCDIR/chunkflow/deploy/grafana/chunkflow.json"
TMP="${TEST_TMPDIR:-/tmp}/scrape"
rm -rf "$TMP"; mkdir -p "$TMP"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -INT "$p" 2>/dev/null; done
            for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in "$TMP/local.out" "$TMP/local.err" "$TMP/prometheus.log"; do
           [[ -s $f ]] && { echo "--- $f"; tail -15 "$f"; }; done; exit 1; }
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
http_get() { python3 -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"; }
query_value() {
  http_get "http://127.0.0.1:$PROM_PORT/api/v1/query?query=$1" 2>/dev/null |
    sed -n 's/.*"value":\[[^],]*,"\([^"]*\)"\].*/\1/p'
}

M=$(free_port)
"$BIN" local --workdir="$TMP/local" --metrics_port="$M" --keep_running --steps=3 --global_batch=4 \
  --dp=1 --pp=2 --dataset=synthetic:lmsys:n=50,seed=1,max=1024 >"$TMP/local.out" 2>"$TMP/local.err" &
LOCAL=$!; pids+=("$LOCAL")
for _ in $(seq 1200); do  # up to 2 min
  grep -q "completed: 3 steps" "$TMP/local.out" 2>/dev/null && break
  kill -0 "$LOCAL" 2>/dev/null || fail "chunkflowctl local exited"
  sleep 0.1
done
grep -q "completed: 3 steps" "$TMP/local.out" || fail "the job did not complete"
echo "ok   local cluster trained 3 steps; /metrics on $M (coordinator), $((M+1)) and $((M+2)) (workers)"

http_get "http://127.0.0.1:$M/metrics" >"$TMP/coordinator.txt" || fail "GET coordinator /metrics"
http_get "http://127.0.0.1:$((M+1))/metrics" >"$TMP/worker.txt" || fail "GET worker /metrics"
for f in coordinator worker; do
  "$PROMTOOL" check metrics <"$TMP/$f.txt" >"$TMP/lint.txt" 2>&1 || { cat "$TMP/lint.txt"; fail "promtool check metrics ($f)"; }
done
echo "ok   promtool check metrics (coordinator and worker)"
exported=$(cat "$TMP/coordinator.txt" "$TMP/worker.txt" | sed -n 's/^\(chunkflow_[a-z_]*\).*/\1/p' | sort -u)
named=$(grep -oh 'chunkflow_[a-z_]*' "$ALERTS" "$DASHBOARD" | sort -u)
unknown=$(comm -13 <(echo "$exported") <(echo "$named"))
[[ -z $unknown ]] || fail "alerts.yml / chunkflow.json name metrics the daemons do not export: $unknown"
echo "ok   the $(echo "$named" | wc -l) metrics named by deploy/'s alerts and dashboard are all exported"

cat >"$TMP/prometheus.yml" <<YML
global: {scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}
rule_files: ["$ALERTS"]
scrape_configs:
  - job_name: chunkflow-coordinator
    static_configs: [{targets: ["127.0.0.1:$M"]}]
  - job_name: chunkflow-worker
    static_configs: [{targets: ["127.0.0.1:$((M+1))", "127.0.0.1:$((M+2))"]}]
YML
"$PROMTOOL" check config "$TMP/prometheus.yml" >/dev/null 2>&1 || fail "promtool check config"
PROM_PORT=$(free_port)
"$PROMETHEUS" --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/tsdb" \
  --web.listen-address="127.0.0.1:$PROM_PORT" >"$TMP/prometheus.log" 2>&1 &
pids+=($!)
steps=""
for _ in $(seq 120); do
  steps="$(query_value chunkflow_steps_total)"; [[ -n $steps ]] && break; sleep 0.5
done
[[ $steps == 3 ]] || fail "chunkflow_steps_total = '$steps', want 3"
echo "ok   query chunkflow_steps_total = 3 (coordinator)"
ops=""
for _ in $(seq 20); do
  ops="$(query_value 'sum(chunkflow_chunks_total%7Bjob%3D%22chunkflow-worker%22%7D)')"
  [[ -n $ops && $ops != 0 ]] && break; sleep 0.5
done
[[ -n $ops && $ops != 0 ]] || fail "sum(chunkflow_chunks_total) over the workers = '$ops'"
echo "ok   query sum(chunkflow_chunks_total{job=\"chunkflow-worker\"}) = $ops (workers)"
up=""
for _ in $(seq 40); do  # each target counts once its first scrape landed
  up="$(query_value 'sum(up)')"; [[ $up == 3 ]] && break; sleep 0.5
done
[[ $up == 3 ]] || fail "sum(up) = '$up', want 3 targets up"
echo "ok   3 targets up"
# Every rule evaluated (after the targets were up) without error, and none fires.
rules_ok=""
for _ in $(seq 40); do
  http_get "http://127.0.0.1:$PROM_PORT/api/v1/rules" >"$TMP/rules.json" 2>/dev/null || { sleep 0.5; continue; }
  rules_ok=$(python3 - "$TMP/rules.json" <<'PY'
import json, sys
rules = [r for g in json.load(open(sys.argv[1]))["data"]["groups"] for r in g["rules"]]
bad = [f"{r['name']}: {r.get('health')} {r.get('lastError', '')}" for r in rules
       if r.get("health") != "ok" or r.get("lastEvaluation", "").startswith("0001")]
print(f"ok {len(rules)}" if rules and not bad else "; ".join(bad) or "no rules")
PY
)
  [[ $rules_ok == ok* ]] && break; sleep 0.5
done
[[ $rules_ok == ok* ]] || fail "alert rules: $rules_ok"
# Pending counts too: most rules wait minutes before firing, longer than
# this test runs. ChunkflowCoordinatorDown may be pending until the rules
# have evaluated once with the coordinator's first scrape in.
alerts=""
for _ in $(seq 20); do
  alerts="$(query_value 'count(ALERTS)')"; [[ -z $alerts ]] && break; sleep 0.5
done
[[ -z $alerts ]] || fail "$alerts alerts pending or firing on a healthy cluster: $(http_get "http://127.0.0.1:$PROM_PORT/api/v1/alerts")"
echo "ok   deploy/'s ${rules_ok#ok } alert rules evaluate on the live metrics; none is pending or firing"
kill -INT "$LOCAL"; wait "$LOCAL"
grep -q "cluster stopped" "$TMP/local.err" || fail "local did not stop cleanly on Ctrl-C"
echo "PASS"
