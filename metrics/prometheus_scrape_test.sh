#!/bin/bash
# A real Prometheus server scrapes metrics_demo and answers a query for a
# chunkflow_ metric with the value the demo recorded; promtool checks the
# scrape config and lints the exposition. Skips (exit 0, visibly) where the
# Debian prometheus package is not installed.
#
# The waits below poll external processes (metrics_demo printing its port,
# Prometheus becoming ready, the first scrape landing), each bounded.
set -u

PROMETHEUS=/usr/bin/prometheus
PROMTOOL=/usr/bin/promtool
if [[ ! -x $PROMETHEUS || ! -x $PROMTOOL ]]; then
  echo "SKIPPED: no prometheus server"
  exit 0
fi

DEMO="${TEST_SRCDIR:-$0.runfiles}/chunkflow/metrics/metrics_demo"
TMP="${TEST_TMPDIR:-$(mktemp -d)}"
mkdir -p "$TMP"
WANT_STEPS=3           # metrics_demo commits 3 steps
WANT_RUNNING_WORKERS=2 # and reports 2 running workers

pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null; done
}
trap cleanup EXIT

fail() {
  echo "FAIL: $*"
  for log in "$TMP/demo.err" "$TMP/prometheus.log"; do
    [[ -s $log ]] && { echo "--- tail of $log"; tail -20 "$log"; }
  done
  exit 1
}

# http_get URL: the body on stdout; non-zero exit on any failure.
http_get() {
  if command -v curl >/dev/null; then
    curl -fsS --max-time 5 "$1"
  elif command -v python3 >/dev/null; then
    python3 -c 'import sys, urllib.request
sys.stdout.write(urllib.request.urlopen(sys.argv[1], timeout=5).read().decode())' "$1"
  else  # bash's /dev/tcp, HTTP/1.0 so the server closes after the response
    local rest="${1#http://}" hostport path
    hostport="${rest%%/*}"; path="/${rest#*/}"
    exec 3<>"/dev/tcp/${hostport%:*}/${hostport##*:}" || return 1
    printf 'GET %s HTTP/1.0\r\nHost: %s\r\n\r\n' "$path" "$hostport" >&3
    local response; response="$(timeout 5 cat <&3)"; exec 3<&-
    [[ "${response%%$'\r'*}" == *" 200 "* ]] || return 1
    printf '%s\n' "${response#*$'\r\n\r\n'}"  # $(...) dropped the final newline
  fi
}

# A port that was free a moment ago (the retry loop below covers a race).
free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])' \
    2>/dev/null || echo $((20000 + RANDOM % 30000))
}

# query_value PROMQL_URLENCODED: the value of the first sample, or nothing.
query_value() {
  http_get "http://127.0.0.1:$PROM_PORT/api/v1/query?query=$1" 2>/dev/null |
    sed -n 's/.*"value":\[[^],]*,"\([^"]*\)"\].*/\1/p'
}

echo "$("$PROMETHEUS" --version 2>&1 | head -1)"

# --- metrics_demo ------------------------------------------------------------
"$DEMO" >"$TMP/demo.out" 2>"$TMP/demo.err" &
pids+=($!)
DEMO_PORT=""
for _ in $(seq 100); do  # up to 10 s
  DEMO_PORT="$(head -1 "$TMP/demo.out" 2>/dev/null)"
  [[ -n $DEMO_PORT ]] && break
  kill -0 "${pids[0]}" 2>/dev/null || fail "metrics_demo exited before printing its port"
  sleep 0.1
done
[[ $DEMO_PORT =~ ^[0-9]+$ ]] || fail "metrics_demo printed no port (got '$DEMO_PORT')"
echo "metrics_demo serves 127.0.0.1:$DEMO_PORT"

# --- promtool check metrics -----------------------------------------------------
http_get "http://127.0.0.1:$DEMO_PORT/metrics" >"$TMP/metrics.txt" || fail "GET /metrics failed"
grep -q "^chunkflow_steps_total $WANT_STEPS\$" "$TMP/metrics.txt" ||
  fail "/metrics lacks 'chunkflow_steps_total $WANT_STEPS'"
"$PROMTOOL" check metrics <"$TMP/metrics.txt" >"$TMP/lint.txt" 2>&1 ||
  { cat "$TMP/lint.txt"; fail "promtool check metrics"; }
echo "ok   promtool check metrics"

# --- prometheus server --------------------------------------------------------
cat >"$TMP/prometheus.yml" <<EOF
global:
  scrape_interval: 1s
  scrape_timeout: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: chunkflow_demo
    static_configs:
      - targets: ["127.0.0.1:$DEMO_PORT"]
EOF
"$PROMTOOL" check config "$TMP/prometheus.yml" >"$TMP/check_config.txt" 2>&1 ||
  { cat "$TMP/check_config.txt"; fail "promtool check config"; }
echo "ok   promtool check config"

PROM_PORT=""
for attempt in 1 2 3; do
  port="$(free_port)"
  "$PROMETHEUS" --config.file="$TMP/prometheus.yml" --storage.tsdb.path="$TMP/tsdb" \
    --web.listen-address="127.0.0.1:$port" >"$TMP/prometheus.log" 2>&1 &
  prom_pid=$!
  pids+=("$prom_pid")
  for _ in $(seq 100); do  # up to 10 s to become ready
    if http_get "http://127.0.0.1:$port/-/ready" >/dev/null 2>&1; then PROM_PORT=$port; break; fi
    kill -0 "$prom_pid" 2>/dev/null || break  # died, e.g. the port was taken meanwhile
    sleep 0.1
  done
  [[ -n $PROM_PORT ]] && break
  kill "$prom_pid" 2>/dev/null; wait "$prom_pid" 2>/dev/null
  echo "prometheus did not become ready on port $port (attempt $attempt)"
done
[[ -n $PROM_PORT ]] || fail "prometheus never became ready"
echo "prometheus ready on 127.0.0.1:$PROM_PORT"

# --- query ---------------------------------------------------------------------
steps=""
for _ in $(seq 60); do  # up to ~30 s for the first scrapes to land
  steps="$(query_value chunkflow_steps_total)"
  [[ -n $steps ]] && break
  sleep 0.5
done
[[ -n $steps ]] || fail "prometheus has no sample of chunkflow_steps_total after 30 s"
[[ $steps == "$WANT_STEPS" ]] || fail "chunkflow_steps_total = '$steps', want $WANT_STEPS"
echo "ok   query chunkflow_steps_total = $steps"

# A labelled series: chunkflow_workers{state="running"}
running="$(query_value 'chunkflow_workers%7Bstate%3D%22running%22%7D')"
[[ $running == "$WANT_RUNNING_WORKERS" ]] ||
  fail "chunkflow_workers{state=\"running\"} = '$running', want $WANT_RUNNING_WORKERS"
echo "ok   query chunkflow_workers{state=\"running\"} = $running"

up="$(query_value 'up%7Bjob%3D%22chunkflow_demo%22%7D')"
[[ $up == 1 ]] || fail "up{job=\"chunkflow_demo\"} = '$up', want 1"
echo "PASS"
