"""Policy replay on synthetic runs with a known answer: a ground-truth system with a linear local latency law is
run under two saturation limits; replaying the first run under the second limit must predict the second run."""

from __future__ import annotations

import heapq
import random

import pytest

from serve_app.records import RequestRecord
from serve_app.sim.latency_model import concurrency_at_start, fit_line, fit_local_model, hold_out, local_points
from serve_app.sim.replay import PolicyConfig, Replayer, measured, prompt_tokens
from serve_app.sim.replay_eval import check_baseline, evaluate, rank
from tests.support.sim_runs import T0, record

PRICING = {
    "source": "test",
    "as_of": "2026-12-01",
    "models": {"claude-sonnet-4-6": {"input": 3.0, "output": 15.0, "cache_write": 3.75, "cache_read": 0.3}},
}


def _ttft(c: int) -> float:
    return 0.1 + 0.05 * c


def _tpot(c: int) -> float:
    return 0.01 + 0.002 * c


def ground_truth(
    saturation: int, *, n: int = 400, gap_s: float = 0.1, noise: float = 0.0, seed: int = 1, source: str = "sim"
) -> list[RequestRecord]:
    """A tiny system: local while fewer than `saturation` local requests are in flight, else cloud."""
    rng = random.Random(seed)
    in_flight: list[float] = []
    out = []
    for i in range(n):
        t = T0 + i * gap_s
        while in_flight and in_flight[0] <= t:
            heapq.heappop(in_flight)
        c = len(in_flight)
        output = 20 + (i % 7) * 10
        common = dict(
            request_id=f"r{i}",
            source=source,
            t_start=t,
            output_tokens=output,
            input_tokens=100,
            prompt_chars=350,
            prompt_tokens_estimated=104,
            max_tokens=256,
        )
        if source == "router":
            common |= dict(local_ready=True, local_inflight=c, cloud_ready=True)
        if c < saturation:
            ttft = _ttft(c) * (1 + noise * rng.uniform(-1, 1))
            latency = ttft + _tpot(c) * (output - 1)
            heapq.heappush(in_flight, t + latency)
            out.append(
                record(
                    **common,
                    t_end=t + latency,
                    backend="local",
                    route_reason="policy_local",
                    ttft_s=ttft,
                    latency_s=latency,
                    cost_usd=0.0,
                    counterfactual_cost_usd=0.001,
                )
            )
        else:
            out.append(
                record(
                    **common,
                    t_end=t + 1.5,
                    backend="cloud",
                    route_reason="local_saturated",
                    ttft_s=0.25,
                    latency_s=1.5,
                    cost_usd=0.001,
                    counterfactual_cost_usd=0.0,
                )
            )
    return out


def config(saturation: int, **routing: object) -> PolicyConfig:
    return PolicyConfig.from_args(
        f"sat{saturation}",
        {"local": {"saturation_inflight": saturation}, "routing": routing, "pricing": PRICING},
        gpu_usd_per_hour=1.0,
    )


def test_fit_line_recovers_an_exact_line_and_reports_its_residuals() -> None:
    line = fit_line([0, 1, 2, 3], [1.0, 3.0, 5.0, 7.0])
    assert (line.intercept, line.slope) == pytest.approx((1.0, 2.0))
    assert line.rmse == pytest.approx(0.0)
    flat = fit_line([2, 2, 2], [1.0, 2.0, 3.0])  # one concurrency level: slope not identified
    assert (flat.intercept, flat.slope) == (2.0, 0.0) and flat.rmse == pytest.approx((2 / 3) ** 0.5)


def test_concurrency_counts_other_requests_in_flight_at_start() -> None:
    assert concurrency_at_start([(0, 10), (1, 2), (3, 4), (5, 11), (11, 12)]) == [0, 1, 1, 1, 0]


def test_local_model_fitted_from_the_run_matches_the_true_law() -> None:
    model = fit_local_model(local_points(ground_truth(4)))
    assert model is not None and model.concurrency_range == (0, 3)
    assert (model.ttft.intercept, model.ttft.slope) == pytest.approx((0.1, 0.05))
    assert (model.tpot.intercept, model.tpot.slope) == pytest.approx((0.01, 0.002))


@pytest.mark.parametrize("source", ["sim", "router"])
def test_replay_predicts_a_run_under_another_saturation_limit(source: str) -> None:
    run4, run8 = ground_truth(4, source=source), ground_truth(8, source=source)
    replayer = Replayer(run4, config(4))
    predicted = replayer.estimate(config(8), replayer.run(config(8)), ttft_slo_s=0.4)
    truth = measured(run8, config(8), ttft_slo_s=0.4)
    assert predicted.local_share == pytest.approx(truth.local_share)
    assert predicted.local_share > measured(run4, config(4), ttft_slo_s=None).local_share  # more goes local
    assert predicted.cloud_usd_per_hour == pytest.approx(truth.cloud_usd_per_hour)
    assert predicted.ttft_p95_s["local"] == pytest.approx(truth.ttft_p95_s["local"])
    assert predicted.gpu_utilisation == pytest.approx(truth.gpu_utilisation)
    assert predicted.slo_violations == truth.slo_violations


def test_replay_of_the_runs_own_config_reproduces_it() -> None:
    run = ground_truth(4, noise=0.3)
    check = check_baseline(Replayer(run, config(4)), ttft_slo_s=0.2)
    assert check.decision_agreement == 1.0
    for row in check.rows:
        assert row.error == pytest.approx(0.0, abs=1e-9), row
    assert check.hold_out is not None and check.hold_out.ttft_rmse_s > 0  # the noise shows as model error


def test_bootstrap_interval_brackets_the_estimate_and_widens_with_noise() -> None:
    def width(noise: float) -> float:
        replayer = Replayer(ground_truth(4, noise=noise), config(4))
        evaluation = evaluate(replayer, config(8), bootstrap=30, seed=3)
        interval = evaluation.intervals["ttft_p95_local"]
        assert interval.low is not None and interval.high is not None and interval.low <= interval.high
        return interval.high - interval.low

    assert width(0.0) == pytest.approx(0.0, abs=1e-9)
    assert width(0.4) > 0.01


def test_hold_out_error_is_zero_for_an_exact_law() -> None:
    check = hold_out(local_points(ground_truth(4)))
    assert check is not None and check.ttft_rmse_s == pytest.approx(0.0, abs=1e-9)


def test_sim_records_estimate_prompt_tokens_from_characters() -> None:
    long = record(prompt_chars=3500, prompt_tokens_estimated=None)
    assert prompt_tokens(long, chars_per_token=3.5, baseline_chars_per_token=3.5) == 1004
    assert (
        prompt_tokens(
            record(prompt_chars=700, prompt_tokens_estimated=212), chars_per_token=7.0, baseline_chars_per_token=3.5
        )
        == 100 + 12
    )  # the recorded overhead is kept
    replayer = Replayer([long], config(4))
    (outcome,) = replayer.run(config(4, max_local_prompt_tokens=500))
    assert (outcome.backend, outcome.reason) == ("cloud", "prompt_too_long")
    assert outcome.cloud_usd == pytest.approx(0.001)  # the local request's counterfactual


def test_sim_records_infer_local_not_ready_windows_from_the_run() -> None:
    run = [record(request_id=f"r{i}", t_start=T0 + i, t_end=T0 + i + 0.5, latency_s=0.5) for i in range(10)]
    run[4:7] = [
        record(
            request_id=f"d{i}",
            t_start=T0 + i,
            t_end=T0 + i + 0.5,
            backend="cloud",
            route_reason="local_not_ready",
            cost_usd=0.002,
        )
        for i in range(4, 7)
    ]
    outcomes = Replayer(run, config(4)).run(config(4))
    assert [o.backend for o in outcomes] == ["local"] * 4 + ["cloud"] * 3 + ["local"] * 3
    assert [o.reason for o in outcomes][4:7] == ["local_not_ready"] * 3


def test_replay_repeats_a_backend_failure_and_its_fallback() -> None:
    run = [record(request_id=f"l{i}", t_start=T0 + i, t_end=T0 + i + 0.5, latency_s=0.5) for i in range(3)]
    failed = record(
        t_start=T0 + 5,
        t_end=T0 + 6,
        backend="cloud",
        route_reason="fallback_local_error",
        fallback=True,
        cost_usd=0.003,
    )
    outcome = Replayer([*run, failed], config(4)).run(config(4))[-1]
    assert (outcome.backend, outcome.reason, outcome.cloud_usd) == ("cloud", "fallback_local_error", 0.003)
    outcome = Replayer([*run, failed], config(4)).run(config(4, fallback=False))[-1]
    assert outcome.backend is None  # without fallback the failure is the answer


def test_replay_without_any_local_measurement_keeps_everything_on_the_cloud() -> None:
    (outcome,) = Replayer([record(backend="cloud", route_reason="has_tools")], config(4)).run(config(4))
    assert (outcome.backend, outcome.reason) == ("cloud", "local_not_ready")


def test_rank_prefers_the_cheapest_candidate_within_the_slo_budget() -> None:
    replayer = Replayer(ground_truth(4), config(4))
    evaluations = [evaluate(replayer, config(s), ttft_slo_s=0.3, bootstrap=0) for s in (2, 4, 5, 8, 16)]
    ranked = [e.estimate.name for e in rank(evaluations, slo_budget=0.05)]
    # More local is cheaper; local TTFT is 0.1 + 0.05 * (others in flight), so a limit of 5 keeps it <= 0.3 s.
    assert ranked == ["sat5", "sat4", "sat2", "sat8", "sat16"]


def test_failures_in_the_run_are_replayed_where_their_cause_is_known() -> None:
    run = [record(request_id=f"l{i}", t_start=T0 + i, t_end=T0 + i + 0.5, latency_s=0.5) for i in range(3)]
    rejected = record(t_start=T0 + 4, backend=None, route_reason=None, status=400, outcome="error", ttft_s=None)
    rate_limited = record(
        t_start=T0 + 5,
        backend=None,
        route_reason=None,
        status=429,
        outcome="error",
        ttft_s=None,
        model_requested="cloud",
    )
    local_failed = record(t_start=T0 + 6, backend="local", status=503, outcome="error", ttft_s=None)
    cut = record(t_start=T0 + 7, backend="local", status=200, outcome="error", ttft_s=0.1)  # failed mid-stream
    outcomes = Replayer([*run, rejected, rate_limited, local_failed, cut], config(4)).run(config(4))
    assert [(o.backend, o.reason) for o in outcomes[3:]] == [
        (None, "rejected"),
        (None, "upstream_error"),  # explicit cloud: no fallback, fails again
        (None, "upstream_error"),  # local fails again, and it could not fall back in the run either
        ("local", "policy_local"),
    ]
