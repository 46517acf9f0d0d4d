#!/bin/bash
# A worker that hangs mid-job (SIGSTOP: a frozen process, or a node that
# stopped answering without closing its connections). The coordinator
# loses it at the heartbeat timeout (2 s) and aborts the job's ranks; the
# survivors, waiting in the step for the frozen rank, must give up those
# waits at once (Communicator::Abort) rather than at the communication
# timeout (300 s here), so the job resumes from its checkpoint with a
# replacement within seconds.
set -u
BIN="$TEST_SRCDIR/chunkflow/cli/chunkflowctl"
TMP="${TEST_TMPDIR:-/tmp}/hang"
rm -rf "$TMP"; mkdir -p "$TMP"
fail=0
pids=()
cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done; }
trap cleanup EXIT

"$BIN" coordinator --listen=127.0.0.1:0 --db="$TMP/db" --port_file="$TMP/port" \
  --heartbeat_timeout_s=2 --comm_timeout_s=300 >>"$TMP/coordinator.log" 2>&1 &
pids+=("$!")
for _ in $(seq 300); do [[ -s "$TMP/port" ]] && break; sleep 0.1; done
C="--coordinator=127.0.0.1:$(cat "$TMP/port")"

start_worker() {  # name
  OMP_NUM_THREADS=1 "$BIN" worker $C --name="$1" >>"$TMP/$1.log" 2>&1 &
  local p=$!; pids+=("$p"); eval "PID_$1=$p"
}
# Polls a condition (a command) every 0.1 s for up to 60 s.
wait_for() {
  for _ in $(seq 600); do "$@" && return 0; sleep 0.1; done
  return 1
}
# Seconds since $1 (date +%s.%N), one decimal.
since() { python3 -c "import time; print(f'{time.time() - $1:.1f}')"; }
# After a freeze at $stopped: ok with the seconds until the condition held,
# or FAIL (60 s) with the job's last events.
within_after_freeze() {  # job, what happened, condition...
  local job="$1" what="$2"; shift 2
  if wait_for "$@"; then
    echo "ok   $what $(since "$stopped") s after the freeze (comm timeout 300 s)"
  else
    echo "FAIL: not within 60 s of the freeze: $what"
    "$BIN" get-job $C --job="$job" | tail -8
    fail=1
  fi
}
steps_committed() {
  "$BIN" get-job $C --job="$1" --format=json 2>/dev/null |
    sed -n 's/.*"steps_committed": "\([0-9]*\)".*/\1/p'
}

for w in w0 w1 w2 w3; do start_worker $w; done
JOB=$("$BIN" submit $C --dp=2 --pp=2 --steps=100000 --global_batch=8 \
  --dataset=synthetic:lmsys:n=40,seed=3,max=600 --chunk_size=128 --optimizer=sgd \
  --checkpoint_dir="$TMP/ckpt" --checkpoint_every=2 | sed -n 's/submitted \(job-[0-9]*\).*/\1/p')
[[ -n "$JOB" ]] || { echo "FAIL: submit"; exit 1; }
three_steps() { local s; s=$(steps_committed "$JOB"); [[ -n "$s" && "$s" -ge 3 ]]; }
wait_for three_steps || { echo "FAIL: the job never committed 3 steps"; exit 1; }

before=$(steps_committed "$JOB")
kill -STOP "$PID_w1"
stopped=$(date +%s.%N)
echo "w1 frozen after $before committed steps"
start_worker w4
# Resumed: the count went back to the checkpoint and is past where it was.
past_the_freeze() { local s; s=$(steps_committed "$JOB"); [[ -n "$s" && "$s" -ge $((before + 3)) ]]; }
within_after_freeze "$JOB" "the job is past step $((before + 3))" past_the_freeze
# How many survivors were waiting in the step (informational: a freeze
# after w1's last collective leaves them idle, with nothing to interrupt;
# then the timing above holds without the abort). None waited out a timeout.
interrupted=$(grep -l "interrupting the running step" "$TMP"/w0.log "$TMP"/w2.log "$TMP"/w3.log | wc -l)
echo "info $interrupted survivor(s) interrupted a running step"
if grep -q "DEADLINE_EXCEEDED" "$TMP"/w0.log "$TMP"/w2.log "$TMP"/w3.log; then
  echo "FAIL: a survivor waited out a timeout"; fail=1
fi
cancelled() { "$BIN" get-job $C --job="$JOB" | grep -q "cancelled"; }
"$BIN" cancel $C --job="$JOB" >/dev/null 2>&1
wait_for cancelled || { echo "FAIL: the cancel did not end $JOB"; fail=1; }

# A worker frozen before the job starts: the coordinator assigns it a rank
# (it has not missed a heartbeat yet), and the other ranks wait in the
# rendezvous for its address. The ABORT at its heartbeat timeout must end
# those waits too.
for w in w5 w6 w7 w8; do start_worker $w; done
four_idle() { [[ $("$BIN" list-workers $C | grep -cE "^w[5-8] .* idle") -eq 4 ]]; }
wait_for four_idle || { echo "FAIL: w5-w8 did not register"; fail=1; }
"$BIN" drain $C --worker=w0 >/dev/null; "$BIN" drain $C --worker=w2 >/dev/null
"$BIN" drain $C --worker=w3 >/dev/null; "$BIN" drain $C --worker=w4 >/dev/null
kill -STOP "$PID_w6"
stopped=$(date +%s.%N)
JOB2=$("$BIN" submit $C --dp=2 --pp=2 --steps=3 --global_batch=8 \
  --dataset=synthetic:lmsys:n=40,seed=3,max=600 --chunk_size=128 --optimizer=sgd \
  | sed -n 's/submitted \(job-[0-9]*\).*/\1/p')
start_worker w9
completed() { "$BIN" get-job $C --job="$JOB2" 2>/dev/null | grep -q "completed"; }
within_after_freeze "$JOB2" "a job set up with a frozen rank completed" completed
interrupted=$(grep -l "interrupting the setup" "$TMP"/w5.log "$TMP"/w7.log "$TMP"/w8.log | wc -l)
echo "info $interrupted worker(s) interrupted a setup"
exit $fail
