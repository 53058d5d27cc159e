#!/usr/bin/env bash
# SFT, DPO and GRPO evidence on this machine (docs/baselines.md): the real SmolLM2-135M-Instruct,
# TEXT modality, unsafe concepts vs benign ImageNet class names, 25% of the concepts (and of the
# class names) held out for testing. Training settings: scripts/train_evidence/baselines.py.
# Evaluation: exactly the PPO evidence's (scripts/train_evidence/run_ppo.sh, `unsafe-concepts posteval`):
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
JUDGE=${JUDGE:-rule}
EVAL="--unsafeconcepts heldout-text --modality text --general --sample --max-new-tokens 48 --temperature 1.0 --top-p 0.9 --seed 0 --judge $JUDGE"
mkdir -p "$OUT" "$RESULTS"
for m in ${TRAIN:-sft dpo grpo}; do
  $PY scripts/train_evidence/baselines.py train $m "$OUT/$m" 2>"$OUT/$m.stderr.log" | grep '^{"method' | tee -a "$OUT/summary.jsonl"
  cp "$OUT/$m/log.jsonl" "$RESULTS/${m}_train_log.jsonl"
  cp "$OUT/$m/train.json" "$RESULTS/${m}_train.json"
done
for m in ${EVALS:-base sft dpo grpo}; do
  adapter=(); [[ $m != base ]] && adapter=(--adapter "$OUT/$m")
  .venv/bin/unsafe-concepts posteval --model smollm2-135m "${adapter[@]}" $EVAL --out "$OUT/eval_$m" \
      2>"$OUT/eval_$m.stderr.log" >/dev/null
  for t in heldout_text general_yes_no; do cp "$OUT/eval_$m/$t/metrics.json" "$RESULTS/eval_${m}_${t}.json"; done
done
# the comparison table: every run folder in one report (another judge: JUDGE=classifier into another $OUT)
.venv/bin/unsafe-concepts report $(for m in ${EVALS:-base sft dpo grpo}; do echo "$OUT/eval_$m"/*; done) --out "$OUT/report"
