#!/bin/bash
# A worker notices a coordinator that went silent without closing the
# connection (its node vanished: no RST, no FIN) through HTTP/2 keepalive
# pings. A TCP proxy between the two is frozen with SIGSTOP: the kernel
# keeps the connection open and even ACKs data, but no gRPC frame comes
# back. The worker's stream must fail within the keepalive time and timeout
# (10 s + 5 s), and the worker start reconnecting; without pings it would
# wait for TCP to give up, minutes later.
set -u
BIN="$TEST_SRCDIR/chunkflow/cli/chunkflowctl"
TMP="${TEST_TMPDIR:-/tmp}/keepalive"
rm -rf "$TMP"; mkdir -p "$TMP"
pids=()
cleanup() { for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done
            wait 2>/dev/null; }
trap cleanup EXIT
fail() { echo "FAIL: $*"; for f in coordinator worker proxy; do
           [[ -s "$TMP/$f.log" ]] && { echo "--- $f"; tail -8 "$TMP/$f.log"; }; done; exit 1; }
wait_file() { for _ in $(seq 200); do [[ -s $1 ]] && return 0; sleep 0.1; done; return 1; }

"$BIN" coordinator --listen=127.0.0.1:0 --port_file="$TMP/port" --db="$TMP/db" \
  >"$TMP/coordinator.log" 2>&1 &
pids+=($!)
wait_file "$TMP/port" || fail "the coordinator did not start"
PORT=$(cat "$TMP/port")

python3 - "$PORT" "$TMP/proxy_port" >"$TMP/proxy.log" 2>&1 <<'PY' &
import socket, sys, threading
target = int(sys.argv[1])
srv = socket.socket()
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(16)
open(sys.argv[2], "w").write(str(srv.getsockname()[1]))
def pipe(a, b):
    try:
        while True:
            d = a.recv(65536)
            if not d:
                break
            b.sendall(d)
    except OSError:
        pass
    finally:
        a.close()
        b.close()
while True:
    c, _ = srv.accept()
    u = socket.create_connection(("127.0.0.1", target))
    threading.Thread(target=pipe, args=(c, u), daemon=True).start()
    threading.Thread(target=pipe, args=(u, c), daemon=True).start()
PY
PROXY=$!
pids+=("$PROXY")
wait_file "$TMP/proxy_port" || fail "the proxy did not start"

"$BIN" worker --coordinator="127.0.0.1:$(cat "$TMP/proxy_port")" --name=w0 >"$TMP/worker.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do
  "$BIN" list-workers --coordinator="127.0.0.1:$PORT" 2>/dev/null | grep -q "^w0 .*idle" && break
  sleep 0.1
done
"$BIN" list-workers --coordinator="127.0.0.1:$PORT" | grep -q "^w0 .*idle" ||
  fail "the worker did not register through the proxy"
sleep 2
grep -q "retrying" "$TMP/worker.log" && fail "the worker's stream broke before the freeze"
echo "ok   worker w0 connected through the proxy"

kill -STOP "$PROXY"
start=$(date +%s)
for _ in $(seq 400); do  # up to 40 s
  grep -q "retrying" "$TMP/worker.log" && break
  sleep 0.1
done
elapsed=$(( $(date +%s) - start ))
grep -q "retrying" "$TMP/worker.log" || fail "no stream failure 40 s after the coordinator went silent"
[[ $elapsed -le 30 ]] || fail "the stream failed only after ${elapsed} s"
echo "ok   the worker noticed the silent coordinator after ${elapsed} s: $(grep -m1 retrying "$TMP/worker.log")"
echo "PASS"
