#!/usr/bin/env bash
# PPO evidence on this machine (docs/training.md): the real SmolLM2-135M-Instruct, TEXT modality,
# unsafe concepts vs benign ImageNet class names, 25% of the concepts (and of the class names)
# held out for testing. Base model -> PPO (configs/ppo_smollm2_text.json) -> the same evaluation.
#
#   bash scripts/train_evidence/run_ppo.sh            # everything (about 1 h on a busy 2-core CPU)
#   STAGE=train bash scripts/train_evidence/run_ppo.sh  # one stage: base | train | after | memory | summary
#
# Re-running resumes training from its last checkpoint. Outputs (adapter, logs, answers) go to $OUT;
# the small metrics files are copied to scripts/train_evidence/results/ppo/.
set -euo pipefail
cd "$(dirname "$0")/../.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OMP_WAIT_POLICY=PASSIVE   # 1 thread: far faster on a shared CPU
PY=.venv/bin/python
OUT=${OUT:-${TMPDIR:-/tmp}/unsafe-concepts-evidence/ppo_smollm2_text}
JUDGE=${JUDGE:-rule}
# post-training evaluation (docs/posteval.md): held-out concepts in text + the general yes/no check, sampled
EVAL="--unsafeconcepts heldout-text --modality text --general --sample --max-new-tokens 48 --temperature 1.0 --top-p 0.9 --seed 0 --judge $JUDGE"
RESULTS=scripts/train_evidence/results/ppo
STAGE=${STAGE:-all}
mkdir -p "$OUT" "$RESULTS"

if [[ $STAGE == all || $STAGE == base ]]; then
  .venv/bin/unsafe-concepts posteval --model smollm2-135m $EVAL --out "$OUT/eval_base"
fi
if [[ $STAGE == all || $STAGE == train ]]; then
  /usr/bin/time -v .venv/bin/unsafe-concepts train ppo --model smollm2-135m --config configs/ppo_smollm2_text.json \
      --out "$OUT/train" 2> >(tee "$OUT/train.stderr" >&2)
  cp "$OUT/train/log.jsonl" "$RESULTS/train_log.jsonl"
  cp "$OUT/train/train.json" "$RESULTS/train.json"
fi
if [[ $STAGE == all || $STAGE == after ]]; then
  .venv/bin/unsafe-concepts posteval --model smollm2-135m --adapter "$OUT/train" $EVAL --out "$OUT/eval_ppo"
fi
if [[ $STAGE == all || $STAGE == memory ]]; then
  $PY benchmarks/ppo_memory.py | tee "$RESULTS/ppo_memory.txt"
fi
if [[ $STAGE == all || $STAGE == summary ]]; then
  # the before/after comparison: ordinary run folders, read by the report
  .venv/bin/unsafe-concepts report "$OUT"/eval_base/* "$OUT"/eval_ppo/* --out "$OUT/report"
  for s in eval_base eval_ppo; do for t in heldout_text general_yes_no; do
    cp "$OUT/$s/$t/metrics.json" "$RESULTS/${s}_${t}.json"; done; done
fi
