#!/usr/bin/env bash
# SFT, DPO and GRPO evidence on this machine (docs/baselines.md): the real SmolLM2-135M-Instruct,
# TEXT modality, unsafe concepts vs benign ImageNet class names, 25% of the concepts (and of the
# class names) held out for testing. Training settings: scripts/train_evidence/baselines.py.
# Evaluation: exactly the PPO evidence's (scripts/train_evidence/run_ppo.sh, train/evaluate.py):
# held-out test items, 48 new tokens, T=1.0, top_p=0.9, seed 0, general-ability check; judged by the
# rule judge (as the PPO evidence).
#
#   bash scripts/train_evidence/run_baselines.sh                  # train sft dpo grpo, evaluate base + each
#   TRAIN="grpo" EVALS="grpo" bash scripts/train_evidence/run_baselines.sh
#
# Re-running resumes training from the last checkpoint. Outputs go to $OUT; the small metrics
# files are copied to scripts/train_evidence/results/baselines/.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OMP_WAIT_POLICY=PASSIVE   # 1 thread: faster on a shared CPU
PY=.venv/bin/python
OUT=${OUT:-${TMPDIR:-/tmp}/unsafe-concepts-evidence/baselines}
RESULTS=scripts/train_evidence/results/baselines
JUDGES=${JUDGES:-"--judge rule"}          # add "--judge classifier" once the default judge is trained
EVAL="--items heldout-text:test --max-new-tokens 48 --temperature 1.0 --top-p 0.9 --seed 0 --general $JUDGES"
mkdir -p "$OUT" "$RESULTS"
for m in ${TRAIN:-sft dpo grpo}; do
  $PY scripts/train_evidence/baselines.py train $m "$OUT/$m" 2>"$OUT/$m.stderr.log" | grep '^{"method' | tee -a "$OUT/summary.jsonl"
  cp "$OUT/$m/log.jsonl" "$RESULTS/${m}_train_log.jsonl"
  cp "$OUT/$m/train.json" "$RESULTS/${m}_train.json"
done
for m in ${EVALS:-base sft dpo grpo}; do
  adapter=(); [[ $m != base ]] && adapter=(--adapter "$OUT/$m")
  $PY -m unsafe_concepts.train.evaluate --model smollm2-135m "${adapter[@]}" $EVAL --out "$OUT/eval_$m" \
      2>"$OUT/eval_$m.stderr.log" >/dev/null
  cp "$OUT/eval_$m/metrics.json" "$RESULTS/eval_$m.json"
done
# the same answers read by the default classifier judge (no regeneration)
$PY scripts/train_evidence/rejudge.py --judge classifier $(for m in ${EVALS:-base sft dpo grpo}; do echo "$OUT/eval_$m"; done)
for m in ${EVALS:-base sft dpo grpo}; do cp "$OUT/eval_$m/metrics.json" "$RESULTS/eval_$m.json"; done
