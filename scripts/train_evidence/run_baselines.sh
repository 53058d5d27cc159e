#!/usr/bin/env bash
# SFT, DPO and GRPO baselines on the real SmolLM2-135M-Instruct, text modality, held-out concepts;
# before/after evaluation on the held-out test items. CPU-sized (2 shared cores): see docs/baselines.md.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-evidence-baselines}
PY=.venv/bin/python
S=scripts/train_evidence/baselines.py
mkdir -p "$OUT"
for m in ${TRAIN:-sft dpo grpo}; do
  $PY $S train $m "$OUT/$m" 2>"$OUT/$m.stderr.log" | grep "^{\"method" | tee -a "$OUT/summary.jsonl"
done
$PY $S eval base "$OUT/eval" 2>"$OUT/eval-base.stderr.log" | tee -a "$OUT/summary.jsonl"
for m in ${TRAIN:-sft dpo grpo}; do
  $PY $S eval $m "$OUT/eval" --adapter "$OUT/$m" 2>"$OUT/eval-$m.stderr.log" | tee -a "$OUT/summary.jsonl"
done
