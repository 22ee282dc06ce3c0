"""The replay command end to end on a synthetic run: candidates from YAML, the check, the ranked table, the block."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
import yaml
from rich.console import Console

from serve_app.sim.replay_cli import load_candidates, replay_main, router_args_of
from tests.support.sim_runs import write_run
from tests.unit.test_sim_replay import PRICING, ground_truth

ROOT = Path(__file__).resolve().parents[2]

CANDIDATES = {
    "baseline": {"local": {"saturation_inflight": 4}, "pricing": PRICING, "gpu_usd_per_hour": 1.0},
    "candidates": [
        {"name": "sat2", "local": {"saturation_inflight": 2}},
        {"name": "sat5", "local": {"saturation_inflight": 5}},
        {
            "name": "sat8-long-to-cloud",
            "local": {"saturation_inflight": 8},
            "routing": {"rules": [{"name": "long_prompts", "backend": "cloud", "min_prompt_tokens": 2000}]},
        },
    ],
}


def test_replay_command_ranks_candidates_and_suggests_the_winner(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", ground_truth(4))
    candidates = tmp_path / "candidates.yaml"
    candidates.write_text(yaml.safe_dump(CANDIDATES))
    out = io.StringIO()
    code = replay_main(
        [
            str(run),
            "--candidates",
            str(candidates),
            "--ttft-slo-ms",
            "300",
            "--bootstrap",
            "5",
            "--json",
            str(tmp_path / "out.json"),
        ],
        console=Console(file=out, width=220),
    )
    assert code == 0
    text = out.getvalue()
    assert "Local latency model from" in text and "Estimator check" in text and "Candidates, best first" in text
    result = json.loads((tmp_path / "out.json").read_text())
    assert result["ranked"][0]["estimate"]["name"] == "sat5"
    assert result["suggested"] == {"routing": {}, "local": {"saturation_inflight": 5}}
    assert result["check"]["decision_agreement"] == 1.0
    maxima = {r["estimate"]["name"]: r["estimate"]["local_concurrency_max"] for r in result["ranked"]}
    assert maxima == {"baseline": 3, "sat2": 1, "sat5": 4, "sat8-long-to-cloud": 7}
    assert "4*" in text and "7*" in text  # beyond the fitted 0-3: marked as extrapolated
    assert all(abs(row["error"]) < 1e-9 for row in result["check"]["rows"] if row["error"] is not None)


def test_replay_command_refuses_a_missing_source(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        replay_main([str(tmp_path / "nothing"), "--candidates", str(tmp_path / "c.yaml")])
    assert exit_info.value.code == 2


def test_baseline_from_the_projects_serve_config(tmp_path: Path) -> None:
    args, gpu = router_args_of(yaml.safe_load((ROOT / "serve_config.local.yaml").read_text()))
    assert args["local"]["model_id"] == "local-model" and gpu == pytest.approx(0.8048)
    spec = tmp_path / "c.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "baseline": {"local": {"saturation_inflight": 2}},  # merged over the Serve config's local block
                "candidates": [{"name": "more", "local": {"saturation_inflight": 32}}],
            }
        )
    )
    baseline, (more,) = load_candidates(spec, config=ROOT / "serve_config.local.yaml", gpu_usd_per_hour=None)
    assert baseline.local.saturation_inflight == 2 and more.local.saturation_inflight == 32
    # Fields the baseline leaves alone come from the Serve config.
    assert more.local.context_window == baseline.local.context_window == args["local"]["context_window"]
    assert baseline.gpu_usd_per_hour == pytest.approx(0.8048) and baseline.pricing is not None
