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
# train / eval
printf '{"input_ids": [1, 2, 3, 4, 5, 6, 7, 8, 9]}\n{"input_ids": [4, 5, 200]}\n{"input_ids": [9, 8, 7, 6, 5, 4]}\n' > "$TMP/t.jsonl"
check train 0 "checkpoint: $TMP/ck" "$BIN" train --dataset="$TMP/t.jsonl" --steps=2 \
  --global_batch=3 --chunk_size=4 --k=1 --stages=2 --output_dir="$TMP/ck"
check train-progress 0 "step 2/2  loss" "$BIN" train --dataset="$TMP/t.jsonl" --steps=2 \
  --global_batch=2 --chunk_size=2
check train-resume 0 "resuming the optimizer at step 2" "$BIN" train --model_dir="$TMP/ck" \
  --dataset="$TMP/t.jsonl" --steps=1 --global_batch=3 --chunk_size=3
check train-resume-cursor 0 "resuming the dataset cursor at batch 2" "$BIN" train \
  --model_dir="$TMP/ck" --dataset="$TMP/t.jsonl" --steps=1 --global_batch=3 --chunk_size=3
check train-resume-other-batch 1 "--global_batch is 2 but the checkpoint's cursor" "$BIN" train \
  --model_dir="$TMP/ck" --dataset="$TMP/t.jsonl" --steps=1 --global_batch=2
check train-zero-chunk-size 1 "--chunk_size must be >= 1, got 0" "$BIN" train --chunk_size=0
# A dataset that changed under a checkpoint (records appended) is refused on
# resume: the shuffle would repeat and skip documents.
cp "$TMP/t.jsonl" "$TMP/grow.jsonl"
check train-grow-first 0 "checkpoint: $TMP/ckg" "$BIN" train --dataset="$TMP/grow.jsonl" --steps=1 \
  --global_batch=1 --output_dir="$TMP/ckg"
printf '{"input_ids": [3, 3]}\n{"input_ids": [4, 4, 4]}\n' >> "$TMP/grow.jsonl"
check train-resume-dataset-changed 1 "(it changed since?) is 5 documents and" "$BIN" train \
  --model_dir="$TMP/ckg" --dataset="$TMP/grow.jsonl" --steps=1 --global_batch=1
# A hand-edited trainer state is an error naming the field, not a crash.
cp -r "$TMP/ckg" "$TMP/ckh"
sed -i 's/"seed": 1/"seed": "1"/' "$TMP/ckh/trainer_state.json"
check train-resume-bad-state 1 "trainer_state.json: not a trainer state (seed must be a non-negative integer)" \
  "$BIN" train --model_dir="$TMP/ckh" --dataset="$TMP/t.jsonl" --steps=1 --global_batch=1
# A token outside the vocabulary in the second step's document: the error
# names the dataset and document, and the first step is kept (saved, with
# the cursor at the bad batch). The seed that draws it second is searched.
printf '{"input_ids": [1, 2, 3]}\n{"input_ids": [4, 300, 6]}\n' > "$TMP/oov.jsonl"
kept=""
for seed in 1 2 3 4 5 6 7 8; do
  rm -rf "$TMP/ckoov"
  o="$("$BIN" train --dataset="$TMP/oov.jsonl" --steps=2 --global_batch=1 --seed=$seed \
       --output_dir="$TMP/ckoov" 2>&1)"
  [[ $o == *"step 1: $TMP/oov.jsonl: document 1 position 1: token id 300 is outside the model's vocabulary [0, 256)"* ]] &&
    { kept=$seed; break; }
done
if [[ -n $kept && $o == *"the 1 step(s) before it are saved in $TMP/ckoov"* ]] &&
   grep -q '"next_batch": 1' "$TMP/ckoov/trainer_state.json"; then
  echo "ok   train-bad-token-keeps-steps (seed $kept)"
else
  echo "FAIL train-bad-token-keeps-steps: seed '$kept', output:"; echo "$o" | tail -3; fail=1
fi
printf '' > "$TMP/empty.jsonl"
check eval-empty-dataset 1 "$TMP/empty.jsonl: the dataset has no documents" "$BIN" eval \
  --model_dir="$TMP/ck" --dataset="$TMP/empty.jsonl"
check plan-empty-dataset 1 "$TMP/empty.jsonl: the dataset has no documents" "$BIN" plan \
  --dataset="$TMP/empty.jsonl"
check eval-json 0 '"mean_loss"' "$BIN" eval --model_dir="$TMP/ck" --dataset="$TMP/t.jsonl" \
  --format=json --chunk_size=2
check eval-table 0 "perplexity" "$BIN" eval --model_dir="$TMP/ck" --dataset="$TMP/t.jsonl"
o="$("$BIN" eval --model_dir="$TMP/ck" --dataset="$TMP/t.jsonl" 2>&1)"
if [[ $o == *"resuming the optimizer"* ]]; then echo "FAIL eval-no-optimizer: eval loaded it"; fail=1
else echo "ok   eval-no-optimizer"; fi
# --output_dir is checked before the first step, and its parents are made.
: > "$TMP/afile"
check train-output-unwritable 1 "--output_dir $TMP/afile/out: cannot create it" "$BIN" train \
  --dataset="$TMP/t.jsonl" --steps=1 --global_batch=1 --output_dir="$TMP/afile/out"
[[ $out != *"step 1/1"* ]] || { echo "FAIL train-output-unwritable trained first"; fail=1; }
check train-output-nested 0 "checkpoint: $TMP/n1/n2/n3" "$BIN" train --dataset="$TMP/t.jsonl" \
  --steps=1 --global_batch=1 --output_dir="$TMP/n1/n2/n3"
# A checkpoint folder whose files come from two saves (one interrupted in
# place) is refused, not resumed with new weights and an old cursor.
cp -r "$TMP/ck" "$TMP/mixed" && cp "$TMP/n1/n2/n3/optimizer.safetensors" "$TMP/mixed/"
check train-resume-mixed-save 1 "mixes two saves: optimizer.safetensors is from save" "$BIN" train \
  --model_dir="$TMP/mixed" --dataset="$TMP/t.jsonl" --steps=1 --global_batch=3 --chunk_size=3
# The base model's tokenizer, generation config and special token ids come
# along into the fine-tuned checkpoint.
cp -r "$TMP/ck" "$TMP/base"
echo '{"eos_token_id": 201}' > "$TMP/base/generation_config.json"
echo '{"model": "test"}' > "$TMP/base/tokenizer.json"
/usr/bin/python3 -c 'import json, sys; p = sys.argv[1]; c = json.load(open(p)); c["eos_token_id"] = 201
json.dump(c, open(p, "w"))' "$TMP/base/config.json"
check train-carries-model-files 0 "checkpoint: $TMP/tuned" "$BIN" train --model_dir="$TMP/base" \
  --dataset="$TMP/t.jsonl" --steps=1 --global_batch=3 --chunk_size=3 --output_dir="$TMP/tuned"
if cmp -s "$TMP/base/tokenizer.json" "$TMP/tuned/tokenizer.json" &&
   cmp -s "$TMP/base/generation_config.json" "$TMP/tuned/generation_config.json" &&
   grep -q '"eos_token_id": 201' "$TMP/tuned/config.json"; then
  echo "ok   train-carries-model-files (tokenizer, generation config, eos_token_id)"
else
  echo "FAIL train-carries-model-files: $(ls "$TMP/tuned")"; fail=1
fi
check train-bad-optimizer 1 "--optimizer must be 'adamw' or 'sgd', got 'adam'" "$BIN" train \
  --optimizer=adam
check train-too-many-stages 1 "--stages: pp 3" "$BIN" train --stages=3 --steps=1
check train-bad-lr 1 "--lr must be finite and >= 0, got -1" "$BIN" train --lr=-1
check train-bad-beta2 1 "--beta2 must be in (0, 1), got 1" "$BIN" train --beta2=1
check submit-bad-beta2 1 "--beta2 must be in (0, 1), got 0" "$BIN" submit --beta2=0
check train-bad-k 1 "--k must be >= 1, got 0" "$BIN" train --k=0
printf '{"input_ids": [1, 2, 999, 3]}\n' > "$TMP/big.jsonl"
check train-token-beyond-vocab 1 "big.jsonl: document 0 position 2: token id 999 is outside the model's vocabulary [0, 256)" "$BIN" train \
  --dataset="$TMP/big.jsonl" --steps=1 --global_batch=1
check train-missing-model 1 "/no/such/model" "$BIN" train --model_dir=/no/such/model
mkdir -p "$TMP/gpt2" && printf '{"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}' \
  > "$TMP/gpt2/config.json"
check train-unknown-architecture 1 "GPT2LMHeadModel" "$BIN" train --model_config="$TMP/gpt2/config.json"
check train-bad-offload 1 '--offload_state: state offload must be never, always or auto, got "sometimes"' \
  "$BIN" train --offload_state=sometimes
check worker-bad-offload 1 '--offload_state: state offload must be never, always or auto' \
  "$BIN" worker --device=cuda --offload_state=sometimes --give_up_after_s=1
check eval-bad-format 1 "--format must be 'table' or 'json'" "$BIN" eval --format=yaml
# A crash leaves its signal and stack trace in the log (a worker retrying an
# unreachable coordinator, sent SIGSEGV); the process still dies of it.
"$BIN" worker --coordinator=127.0.0.1:1 --give_up_after_s=60 > "$TMP/crash.log" 2>&1 &
pid=$!
sleep 2
kill -SEGV "$pid"
wait "$pid"; rc=$?
if [[ $rc -ne 139 ]] || ! grep -q "SIGSEGV received" "$TMP/crash.log"; then
  echo "FAIL crash-report: rc=$rc (want 139), log:"; tail -5 "$TMP/crash.log"; fail=1
else
  echo "ok   crash-report"
fi
# SIGTERM stops a worker cleanly (exit 0, "stopping" logged) once it runs,
# with its /metrics server's and gRPC's threads up: the signals are blocked
# before the daemon starts any thread, so none of those threads dies of one.
for try in 1 2 3; do
  "$BIN" worker --coordinator=127.0.0.1:1 --metrics_listen=127.0.0.1:0 --give_up_after_s=60 \
    > "$TMP/term.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do grep -q "connecting to" "$TMP/term.log" && break; sleep 0.05; done
  kill -TERM "$pid"
  wait "$pid"; rc=$?
  if [[ $rc -ne 0 ]] || ! grep -q "signal 15, stopping" "$TMP/term.log"; then
    echo "FAIL worker-sigterm $try: rc=$rc (want 0), log:"; tail -5 "$TMP/term.log"; fail=1
  else
    echo "ok   worker-sigterm $try"
  fi
done
exit $fail
