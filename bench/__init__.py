"""Benchmarks (not tests): router overhead, throughput and telemetry cost, measured as ratios in one run."""
