"""benchmarks/gpu_check.py end to end with --size tiny: the same code paths the GPU run measures
(LLaVA-1.5 structure from a config, HFBackend generation and log-prob scoring, a PPO step with LoRA,
against a separate reference copy) print one JSON line each and a summary with the projections."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"


@pytest.fixture(scope="module")
def lines():
    proc = subprocess.run([sys.executable, str(SCRIPT), "--size", "tiny", "--device", "cpu"],
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert rows, proc.stdout
    return rows


def by_kind(rows, kind):
    return [r for r in rows if r["measurement"] == kind]


def test_every_measurement_ran(lines):
    summary = by_kind(lines, "summary")[0]
    assert summary["skipped"] == [], summary["skipped"]
    gen = by_kind(lines, "generate")
    assert [r["batch_size"] for r in gen] == [1, 4]
    assert all(r["responses_per_s"] > 0 and r["mean_tokens"] == r["max_new_tokens"] == 4 for r in gen)
    assert by_kind(lines, "logprob")[0]["queries_per_s"] > 0
    ppo = {r["variant"]: r for r in by_kind(lines, "ppo_step")}
    assert set(ppo) == {"adapter_off", "separate_copy"}
    assert all(r["step_s"][0] > 0 and r["rollout"] == 8 for r in ppo.values())


def test_the_tiny_model_has_llava_15_structure(lines):
    """Same vocabulary (32064), same layout; only widths and depths are small."""
    sys.path.insert(0, str(SCRIPT.parent))
    import gpu_check

    assert gpu_check.SIZES["tiny"]["vocab_size"] == gpu_check.SIZES["7b"]["vocab_size"] == 32064
    full = gpu_check.SIZES["7b"]
    assert full["text"]["num_hidden_layers"] == 32 and full["text"]["hidden_size"] == 4096
    assert full["vision"]["image_size"] == 336 and full["vision"]["patch_size"] == 14
    assert by_kind(lines, "build")[0]["parameters"] > 0


def test_summary_projects_the_full_benchmark_and_the_paper_ppo_run(lines):
    s = by_kind(lines, "summary")[0]
    best = s["generate_best"]["responses_per_s"]
    assert s["full_benchmark_generate_h"] == pytest.approx(7835 / best / 3600, abs=0.01)
    assert s["paper_ppo_steps"] == 308 and s["paper_ppo_run_h"] == pytest.approx(308 * s["ppo_step_s"] / 3600, abs=0.01)
    assert "full_benchmark_logprob_min" in s and s["device"] == "cpu"
