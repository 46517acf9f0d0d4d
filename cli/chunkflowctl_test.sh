#!/bin/bash
# End-to-end checks of the chunkflowctl binary: exit codes and messages.
set -u
BIN="$TEST_SRCDIR/chunkflow/cli/chunkflowctl"
TMP="${TEST_TMPDIR:-/tmp}"
fail=0
check() {  # name, expected exit code, needle in output, command...
  local name="$1" code="$2" needle="$3"; shift 3
  out="$("$@" 2>&1)"; rc=$?
  if [[ $rc -ne $code ]] || [[ "$out" != *"$needle"* ]]; then
    echo "FAIL $name: rc=$rc (want $code), output:"; echo "$out" | tail -5; fail=1
  else
    echo "ok   $name"
  fi
}
check help 1 "--global_batch" "$BIN" --help
check no-command 2 "Commands:" "$BIN"
check unknown-command 2 "unknown command 'fly'" "$BIN" fly
check plan-table 0 "megatron-pack +recompute" "$BIN" plan \
  --dataset=synthetic:lmsys:n=2000,seed=2 --global_batch=64 --steps=1 --model=tiny --pp=2
check plan-bad-k 1 "--k must be >= 1, got 0" "$BIN" plan --k=0
check plan-missing-dataset 1 "/no/such/data" "$BIN" plan --dataset=/no/such/data
printf '{"input_ids": [1, 2, 3]}\n{"input_ids": [4, 5]}\n' > "$TMP/d.jsonl"
check convert 0 "wrote" "$BIN" convert --input="$TMP/d.jsonl" --output_prefix="$TMP/d"
check plan-converted 0 "chunkflow" "$BIN" plan --dataset="$TMP/d" --global_batch=2 --steps=1 \
  --model=tiny --pp=1 --dp=1 --chunk_size=2
printf '{"input_ids": [1, 2.5]}\n' > "$TMP/bad.jsonl"
check convert-bad 1 "bad.jsonl:1" "$BIN" convert --input="$TMP/bad.jsonl" --output_prefix="$TMP/b"
check plan-json 0 '"steps"' "$BIN" plan --format=json --dataset=synthetic:uniform:n=100,max=5000 \
  --global_batch=16 --steps=1 --model=tiny --pp=2 --dp=1
exit $fail
