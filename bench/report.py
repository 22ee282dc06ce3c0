"""The benchmark's tables, from one run's results, written into docs/benchmarks.md between generated markers.

Each table is rendered from the result dicts of bench_cloud, bench_router_telemetry and bench_default_model
of the same run and replaces the text between `<!-- bench:NAME:begin -->` and `<!-- bench:NAME:end -->`;
nothing between the markers is written by hand. Ratios are to sides measured in the same run only.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from bench import common

DOC = common.REPO / "docs" / "benchmarks.md"

CLOUD_SIDES = (
    ("direct", "stand-in directly (`POST /v1/messages`)"),
    ("forwarder", "bare forwarder on the same Serve ingress (the floor)"),
    ("router-notel", "router, telemetry off"),
    ("router", "router, telemetry as deployed (every span over OTLP)"),
    ("litellm", "LiteLLM proxy, one worker, no callbacks"),
)


def _num(value: Any, fmt: str = ".1f") -> str:
    return "-" if value is None else format(value, fmt)


def _ratio(a: Any, b: Any, fmt: str = ".2f") -> str:
    return "-" if not a or not b else format(a / b, fmt) + "x"


def _get(data: dict[str, Any], *path: str) -> Any:
    for key in path:
        if not isinstance(data, dict) or key not in data:
            return None
        data = data[key]
    return data


def _cpu(side: str, row: dict[str, Any]) -> float | None:
    """CPU ms per request of what serves the side: every Ray process, LiteLLM's process tree, the stand-in."""
    cpu = row.get("cpu_ms_per_request", {})
    if side == "direct":
        return cpu.get("standin")
    if side == "litellm":
        return cpu.get("litellm")
    return row.get("ray_cpu_ms_per_request")


def cloud_table(cloud: dict[str, Any]) -> str:
    tp = cloud.get("throughput_c16", {})
    c1 = cloud.get("c1_json", {})
    direct_p50 = _get(c1, "direct", "total_ms", "p50")
    floor, litellm = tp.get("forwarder", {}), tp.get("litellm", {})
    lines = [
        "| side | c=1 p50 | added to direct | req/s c=16 | p99 c=16 | CPU ms/request | req/s ÷ floor | req/s ÷ LiteLLM "
        "| CPU ÷ floor | CPU ÷ LiteLLM |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for side, label in CLOUD_SIDES:
        row = tp.get(side)
        if not row:
            continue
        p50 = _get(c1, side, "total_ms", "p50")
        added = None if p50 is None or direct_p50 is None or side == "direct" else p50 - direct_p50
        cpu = _cpu(side, row)
        lines.append(
            f"| {label} | {_num(p50, '.2f')} ms | {'-' if added is None else f'{added:+.2f} ms'} | "
            f"{_num(row['req_per_s'])} | {_num(row['latency_ms']['p99'])} ms | {_num(cpu, '.2f')} | "
            f"{_ratio(row['req_per_s'], floor.get('req_per_s'))} | "
            f"{_ratio(row['req_per_s'], litellm.get('req_per_s'))} | "
            f"{_ratio(cpu, _cpu('forwarder', floor) if floor else None)} | "
            f"{_ratio(cpu, _cpu('litellm', litellm) if litellm else None)} |"
        )
    return "\n".join(lines)


def _cpu_cell(row: dict[str, Any]) -> str:
    """The router application's CPU per request, and the export process's part of it when it has one."""
    total, export = row.get("router_cpu_ms_per_request"), row.get("export_process_cpu_ms_per_request")
    return _num(total, ".2f") + (f" ({export:.2f})" if export else "")


def telemetry_table(tel: dict[str, Any]) -> str:
    lat, tp = tel.get("latency_c1", {}), tel.get("throughput_c16", {})
    off = tp.get("off", {})
    off_p50 = _get(lat, "json", "off", "total_ms", "p50")
    lines = [
        "| telemetry | c=1 p50 (json) | added to off | c=1 TTFT p50 (stream) | req/s c=16 | ÷ off | p99 c=16 | ÷ off "
        "| router CPU ms/request (export process) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for mode, label in (tel.get("labels") or {}).items():
        row = tp.get(mode)
        if not row:
            continue
        json_p50 = _get(lat, "json", mode, "total_ms", "p50")
        ttft_p50 = _get(lat, "stream", mode, "ttft_ms", "p50")
        added = "-" if mode == "off" or json_p50 is None or off_p50 is None else f"{json_p50 - off_p50:+.2f} ms"
        lines.append(
            f"| {label} | {_num(json_p50, '.2f')} ms | {added} | {_num(ttft_p50, '.2f')} ms | "
            f"{_num(row['req_per_s'])} | {_ratio(row['req_per_s'], off.get('req_per_s'))} | {_num(row['p99_ms'])} ms | "
            f"{_ratio(row['p99_ms'], off.get('p99_ms'))} | {_cpu_cell(row)} |"
        )
    exported = tel.get("exported_during_run", {})
    if exported:
        requests = exported.get("requests", {})
        exporting = sum(n for name, n in requests.items() if name != "off")
        lines.append("")
        lines.append(
            f"Exported while measuring (counted by the sink afterwards): {exported['otlp_router_spans']} router spans "
            f"over OTLP for {exporting} requests to the exporting variants "
            f"({_num(exported.get('router_spans_per_request'), '.3f')} per request; each is a Langfuse generation "
            f"once the Collector's filter forwards it), {exported['langfuse_generations']} generations on "
            f"Langfuse's route for {requests.get('direct', 0)} requests to the direct exporter "
            f"({_num(exported.get('generations_per_request'), '.3f')} per request), and "
            f"{exported.get('client_spans', 0)} Anthropic HTTP client spans for {requests.get('client', 0)} requests "
            f"with `http_client_spans` ({_num(exported.get('client_spans_per_request'), '.3f')} per request; none "
            f"from the other variants). Slightly above 1: wrk stops counting while its last requests are answered."
        )
    return "\n".join(lines)


TARGET_VARIANTS = ("otlp", "direct")  # as deployed (the Collector feeds Langfuse), and without a Collector


def targets_table(tel: dict[str, Any]) -> str:
    """The issue's telemetry targets against telemetry off, same router, same run."""
    lat, tp = tel.get("latency_c1", {}), tel.get("throughput_c16", {})
    off = tp.get("off", {})
    p50_off = _get(lat, "json", "off", "total_ms", "p50")
    exported = tel.get("exported_during_run", {})
    labels = tel.get("labels") or {}
    lines = ["| target | wanted | " + " | ".join(labels.get(v, v) for v in TARGET_VARIANTS) + " |"]
    lines.append("| --- | --- |" + " --- |" * len(TARGET_VARIANTS))

    def cell(value: str, ok: bool) -> str:
        return f"{value} ({'met' if ok else '**not met**'})"

    pairs = tel.get("paired_c16") or {}
    p99, rps, p50 = [], [], []
    for variant in TARGET_VARIANTS:
        on = tp.get(variant, {})
        r99 = on.get("p99_ms") / off["p99_ms"] if on.get("p99_ms") and off.get("p99_ms") else None
        rr = on.get("req_per_s") / off["req_per_s"] if on.get("req_per_s") and off.get("req_per_s") else None
        if pairs.get("variant") == variant and pairs.get("pairs"):  # adjacent ABBA pairs: drift cancels
            r99, rr = pairs["p99_ratio_median"], pairs["req_per_s_ratio_median"]
        p50_on = _get(lat, "json", variant, "total_ms", "p50")
        added = None if p50_on is None or p50_off is None else p50_on - p50_off
        p99.append("-" if r99 is None else cell(f"{r99:.2f}x", r99 <= 1.2))
        rps.append("-" if rr is None else cell(f"{rr:.2f}x", rr >= 0.95))
        p50.append("-" if added is None else cell(f"{added:+.2f} ms", added <= 0.3))
    lines.append("| p99 at c=16, ÷ off | <= 1.20x | " + " | ".join(p99) + " |")
    lines.append("| req/s at c=16, ÷ off | >= 0.95x | " + " | ".join(rps) + " |")
    lines.append("| p50 at c=1, added to off | <= +0.3 ms | " + " | ".join(p50) + " |")
    if pairs.get("pairs"):
        n, lo, hi = len(pairs["pairs"]), *pairs["req_per_s_ratio_range"]
        p_lo, p_hi = pairs["p99_ratio_range"]
        cpu = pairs.get("router_cpu_ms_per_request_median") or {}
        spent = ""
        if cpu.get("off") is not None and cpu.get(pairs["variant"]) is not None:
            export = pairs.get("export_process_cpu_ms_per_request_median") or 0.0
            spent = (
                f"; router CPU per request {cpu['off']:.2f} ms off, {cpu[pairs['variant']]:.2f} ms on, of which "
                f"the export process {export:.2f} ms"
            )
        if pairs.get("router_spans_per_request") is not None:
            spent += f"; {pairs['router_spans_per_request']:.3f} router spans exported per request"
        aa = pairs.get("aa") or {}
        if aa.get("pairs"):  # what the method reports when nothing differs: its resolution
            a_lo, a_hi = aa["req_per_s_ratio_range"]
            spent += (
                f"; A/A check, a second telemetry-off router ÷ off in pairs alternating with these: req/s "
                f"{aa['req_per_s_ratio_median']:.2f}x ({a_lo:.2f}-{a_hi:.2f}x), p99 {aa['p99_ratio_median']:.2f}x"
            )
        lines.append(
            f"| (req/s and p99 of {labels.get(pairs['variant'], pairs['variant'])}: medians of {n} adjacent "
            f"ABBA pairs of {pairs['seconds']} s runs in a cluster with no other variant deployed; req/s ratios "
            f"{lo:.2f}-{hi:.2f}x, p99 {p_lo:.2f}-{p_hi:.2f}x{spent}) | | |"
        )
    if exported:
        spans, gens = exported.get("router_spans_per_request"), exported.get("generations_per_request")

        def one(x: float | None) -> str:
            return "-" if x is None else cell(f"{x:.3f}", abs(x - 1) < 0.02)

        lines.append(
            "| router spans, generations per request | 1, 1 | "
            f"{one(spans)}, {one(exported.get('collector_generations_per_request'))} (via the Collector) | "
            f"{one(spans)}, {one(gens)} |"
        )
    return "\n".join(lines)


TELEMETRY_CPU_SIDES = (
    ("off", "telemetry off (no span)"),
    ("span", "the SDK span only: made, filled, ended, batched; never encoded"),
    ("thread", "OTLP, encoded in the replica's export thread (`export_process: false`)"),
    (
        "process",
        "OTLP as deployed: a LightSpan in the replica; the SDK's span built and encoded in the export process",
    ),
)


def telemetry_cpu_table(data: dict[str, Any]) -> str:
    """bench_telemetry_cpu: the router's CPU per cloud request in process, part by part, and the export process's."""
    sides = data.get("sides", {})
    lines = [
        "| telemetry | replica CPU µs/request, median batch | added to off | ÷ off | lowest batch | added to off "
        "| export process CPU µs/request |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    off = _get(sides, "off", "cpu_us_per_request")
    off_low = _get(sides, "off", "lowest_cpu_us_per_request")
    for side, label in TELEMETRY_CPU_SIDES:
        row = sides.get(side)
        if not row:
            continue
        cpu, low = row.get("cpu_us_per_request"), row.get("lowest_cpu_us_per_request")
        added = "-" if side == "off" or cpu is None or off is None else f"{cpu - off:+.1f} µs"
        added_low = "-" if side == "off" or low is None or off_low is None else f"{low - off_low:+.1f} µs"
        child = row.get("export_process_cpu_us_per_request")
        lines.append(
            f"| {label} | {_num(cpu)} | {added} | {_ratio(cpu, off, '.3f')} | {_num(low)} | {added_low} "
            f"| {_num(child) if child else '-'} |"
        )
    spans = data.get("router_spans_received")
    if spans is not None:
        lines.append("")
        lines.append(f"Router spans the sink received from the two exporting sides: {spans}.")
    return "\n".join(lines)


# bench_default_model's sides in the order the table shows them; a side the run did not have gets no row
MODEL_SIDES = (
    ("direct", "vLLM's own server"),
    ("direct-stats", "vLLM's own server, engine stats on"),
    ("ingress", "Ray Serve LLM's OpenAiIngress"),
    ("router", "the router"),
    ("router-notel", "the router, telemetry off"),
    ("router-grpc", "the router, handle over gRPC"),
    ("router-ray", "the router, handle on Ray's streaming generator"),
    ("handle", "a DeploymentHandle stream, no HTTP"),
    ("handle-grpc", "a DeploymentHandle stream over gRPC"),
)
MODEL_FIGURES = (
    ("TTFT p50", "ttft_ms", "p50", ".0f"),
    ("TTFT p95", "ttft_ms", "p95", ".0f"),
    ("ITL p50", "itl_ms", "p50", ".1f"),
)


def _concurrencies(model: dict[str, Any]) -> list[str]:
    """The result's concurrency blocks ("c1", "c8", ...) in increasing concurrency."""
    keys = [k for k, v in model.items() if k[:1] == "c" and k[1:].isdigit() and isinstance(v, dict)]
    return sorted(keys, key=lambda k: int(k[1:]))


def model_table(model: dict[str, Any]) -> str:
    """One row per side and concurrency of a bench_default_model result: TTFT p50/p95 and inter-token latency p50,
    each also as a ratio to vLLM's own server (`direct`) and, for the Ray sides, to OpenAiIngress (`ingress`) of
    the same concurrency in the same run; "-" where a side or a figure is missing."""
    head = "| side | c | streams |"
    for name, *_ in MODEL_FIGURES:
        head += f" {name} | ÷ vLLM | ÷ OpenAiIngress |"
    lines = [
        head + " tokens/s per stream p50 | tokens/s all streams |",
        "| --- " * (3 + 3 * len(MODEL_FIGURES) + 2) + "|",
    ]
    labels = dict(MODEL_SIDES)
    for key in _concurrencies(model):
        block = model[key]
        order = [name for name, _ in MODEL_SIDES if name in block] + [name for name in block if name not in labels]
        for name in order:
            row = block[name] if isinstance(block[name], dict) else {}
            label = f"{labels[name]} (`{name}`)" if name in labels else f"`{name}`"
            cells = [label, key[1:], _num(_get(row, "ttft_ms", "n"), "d")]
            for _, metric, stat, fmt in MODEL_FIGURES:
                value = _get(row, metric, stat)
                to_ingress = _get(block, "ingress", metric, stat) if not name.startswith("direct") else None
                cells += [
                    "-" if value is None else f"{value:{fmt}} ms",
                    _ratio(value, _get(block, "direct", metric, stat)),
                    _ratio(value, to_ingress),
                ]
            cells += [_num(row.get("stream_tok_s_p50")), _num(row.get("aggregate_tok_s_mean"))]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def model_run_line(model: dict[str, Any]) -> str:
    """The default-model run's command, time, machine, load and size, as its result records them."""
    machine, args = model.get("machine") or {}, model.get("args")
    command = (
        "`python -m bench.bench_default_model" + "".join(f" {a}" for a in args) + "`" if args is not None else None
    )
    started, ended = model.get("started"), machine.get("date")
    when = f"from {started} to {ended}" if started else f"ending {ended}"
    rounds = model.get("rounds") or {}
    size = ", ".join(
        f"{n} streams per side at c=1" if key == "c1" else f"{n} batches of {key[1:]} streams per side at c={key[1:]}"
        for key, n in rounds.items()
    )
    return (
        f"Generated from a run of {command or '`bench/bench_default_model.py`'}, {when} ({machine.get('cpus')} CPUs, "
        f"Python {machine.get('python')}, Ray {machine.get('ray')}); load average "
        f"{_load(model.get('load_before'))} before, {_load(model.get('load_after'))} after"
        + (f"; {size}." if size else ".")
    )


def model_block(model: dict[str, Any]) -> str:
    """What goes between the `bench:model` markers."""
    return model_run_line(model) + "\n\n" + model_table(model)


def _load(values: Any) -> str:
    return " ".join(str(x) for x in values) if values else "-"


def run_line(machine: dict[str, Any], extra: str = "", data: dict[str, Any] | None = None) -> str:
    """Where and when; the 1/5/15-minute load averages before and after the phase (a shared machine)."""
    data = data or {}
    return (
        f"Generated by `make bench`{extra} on {machine.get('date')} ({machine.get('cpus')} CPUs, Python "
        f"{machine.get('python')}, Ray {machine.get('ray')}); load average {_load(data.get('load_before'))} "
        f"before, {_load(data.get('load_after'))} after."
    )


def replace_block(text: str, name: str, body: str) -> str:
    begin, end = f"<!-- bench:{name}:begin -->", f"<!-- bench:{name}:end -->"
    pattern = re.compile(re.escape(begin) + r".*?" + re.escape(end), re.S)
    block = f"{begin}\n{body}\n{end}"
    if pattern.search(text):
        return pattern.sub(lambda _: block, text)
    return text.rstrip("\n") + f"\n\n{block}\n"


def write_docs(blocks: dict[str, str], path: Path = DOC) -> Path:
    text = path.read_text()
    for name, body in blocks.items():
        text = replace_block(text, name, body)
    path.write_text(text)
    return path


def from_results(
    quick_note: str = "", phases: tuple[str, ...] = ("cloud", "model"), *, proxy: str = "haproxy"
) -> dict[str, str]:
    """The tables from the last run's files in bench/results/ (`python -m bench.report` rewrites the docs)."""
    import json

    def load(name: str) -> dict[str, Any] | None:
        path = common.RESULTS / f"{name}.json"
        return json.loads(path.read_text()) if path.exists() else None

    blocks: dict[str, str] = {}
    cloud, tel, model = load(f"cloud-{proxy}"), load(f"router-telemetry-{proxy}"), load("default-model")
    tel_cpu = load("telemetry-cpu")
    if "cloud" in phases and cloud and tel:
        blocks["cloud"] = run_line(cloud["machine"], quick_note, cloud) + "\n\n" + cloud_table(cloud)
        blocks["telemetry"] = run_line(tel.get("machine", cloud["machine"]), quick_note, tel) + "\n\n"
        blocks["telemetry"] += telemetry_table(tel)
        blocks["telemetry-targets"] = targets_table(tel)
    if "cloud" in phases and tel_cpu:
        blocks["telemetry-cpu"] = run_line(tel_cpu["machine"], quick_note, tel_cpu) + "\n\n"
        blocks["telemetry-cpu"] += telemetry_cpu_table(tel_cpu)
    if "model" in phases and model:
        blocks["model"] = model_block(model)
    return blocks


if __name__ == "__main__":
    written = from_results()
    for name, body in written.items():
        print(f"[{name}]\n{body}\n")
    print(write_docs(written))
