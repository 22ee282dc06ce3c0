"""Workload files: their schema, a loader that names every problem, and seeded length sampling; pure, no I/O but reads.

A workload is one YAML file (format version 1, documented in docs/simulate.md): what kind of request it sends, over
which API, with which prompt and output length distributions, which share streams, which model names, and its
weight inside a mix. A mix (`include:`) combines other workloads by weight. Users bring their own file by path.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

FORMAT_VERSION = 1
WORKLOADS_DIR = Path(__file__).parent / "workloads"
KINDS = ("chat", "multi_turn", "json_extract", "summarise", "code", "long_context", "tools", "images")
Api = Literal["openai", "anthropic"]


class WorkloadError(ValueError):
    """A workload file that cannot be used; the message names the file and the field."""


@dataclass(frozen=True, slots=True)
class Distribution:
    """Token counts drawn from `dist` (fixed, uniform, normal, lognormal), clipped to [min, max]."""

    dist: str
    min: int
    max: int
    value: int | None = None  # fixed
    mean: float | None = None  # normal
    sd: float | None = None  # normal
    median: float | None = None  # lognormal
    sigma: float | None = None  # lognormal

    def sample(self, rng: random.Random) -> int:
        if self.dist == "fixed":
            drawn = float(self.value or 0)
        elif self.dist == "uniform":
            drawn = rng.uniform(self.min, self.max)
        elif self.dist == "normal":
            drawn = rng.gauss(self.mean or 0.0, self.sd or 0.0)
        else:
            drawn = rng.lognormvariate(math.log(self.median or 1.0), self.sigma or 0.0)
        return max(self.min, min(self.max, round(drawn)))


@dataclass(frozen=True, slots=True)
class Workload:
    """One request family. `models` maps a model name to its share (shares sum to 1)."""

    name: str
    kind: str
    api: Api
    weight: float
    stream: float
    models: tuple[tuple[str, float], ...]
    prompt_tokens: Distribution
    output_tokens: Distribution
    turns: Distribution | None = None
    description: str = ""
    source: str = ""

    def pick_model(self, rng: random.Random) -> str:
        names = [name for name, _ in self.models]
        return rng.choices(names, weights=[share for _, share in self.models])[0]


@dataclass(frozen=True, slots=True)
class Mix:
    """Workloads and their normalised weights; a single workload is a mix of one."""

    name: str
    parts: tuple[tuple[Workload, float], ...]

    def pick(self, rng: random.Random) -> Workload:
        return rng.choices([w for w, _ in self.parts], weights=[share for _, share in self.parts])[0]


def available() -> list[str]:
    """Names of the workloads shipped with the project."""
    return sorted(path.stem for path in WORKLOADS_DIR.glob("*.yaml"))


def resolve(name_or_path: str) -> Path:
    """A shipped workload by name, or a user's file by path."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise WorkloadError(f"{name_or_path}: no such workload file")
        return path
    shipped = WORKLOADS_DIR / f"{name_or_path}.yaml"
    if not shipped.is_file():
        raise WorkloadError(f"unknown workload '{name_or_path}'; shipped: {', '.join(available())}, or give a path")
    return shipped


def load(name_or_path: str) -> Mix:
    """Loads and validates a workload or a mix; every problem raises WorkloadError naming file and field."""
    return _load(resolve(name_or_path), seen=())


def _load(path: Path, *, seen: tuple[Path, ...]) -> Mix:
    if path.resolve() in seen:
        raise WorkloadError(f"{path}: includes itself (through {' -> '.join(p.name for p in seen)})")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise WorkloadError(f"{path}: not valid YAML ({exc})") from None
    where = str(path)
    if not isinstance(data, dict):
        raise WorkloadError(f"{where}: must be a mapping with version, name and either kind or include")
    if data.get("version") != FORMAT_VERSION:
        raise WorkloadError(f"{where}: version: must be {FORMAT_VERSION} (got {data.get('version')!r})")
    name = _str(data, "name", where)
    if "include" in data:
        _only(data, {"version", "name", "description", "include"}, where)
        items = data["include"]
        if not isinstance(items, list) or not items:
            raise WorkloadError(f"{where}: include: a non-empty list of {{workload, weight}}")
        parts: list[tuple[Workload, float]] = []
        for i, item in enumerate(items):
            at = f"{where}: include[{i}]"
            if not isinstance(item, dict) or "workload" not in item:
                raise WorkloadError(f"{at}: must be a mapping with `workload` (a name or path) and `weight`")
            _only(item, {"workload", "weight"}, at)
            weight = _number(item, "weight", at, default=None)
            if weight is None or weight <= 0:
                raise WorkloadError(f"{at}.weight: a number > 0 is required")
            try:
                sub = _load(resolve(str(item["workload"])), seen=(*seen, path.resolve()))
            except WorkloadError as exc:
                raise WorkloadError(f"{at}: {exc}") from None
            parts.extend((w, weight * share) for w, share in sub.parts)
        return Mix(name, _normalised(parts))
    workload = parse_workload(data, where)
    return Mix(name, ((workload, 1.0),))


_WORKLOAD_KEYS = {
    "version",
    "name",
    "description",
    "kind",
    "api",
    "weight",
    "stream",
    "model",
    "prompt_tokens",
    "output_tokens",
    "turns",
}


def parse_workload(data: dict[str, Any], where: str) -> Workload:
    _only(data, _WORKLOAD_KEYS, where)
    kind = _str(data, "kind", where)
    if kind not in KINDS:
        raise WorkloadError(f"{where}: kind: '{kind}' is not one of {', '.join(KINDS)}")
    api = data.get("api", "openai")
    if api not in ("openai", "anthropic"):
        raise WorkloadError(f"{where}: api: 'openai' or 'anthropic' (got {api!r})")
    stream = _number(data, "stream", where, default=0.0)
    if not 0.0 <= stream <= 1.0:
        raise WorkloadError(f"{where}: stream: the share of streamed requests, between 0 and 1 (got {stream})")
    weight = _number(data, "weight", where, default=1.0)
    if weight <= 0:
        raise WorkloadError(f"{where}: weight: must be > 0 (got {weight})")
    turns = _distribution(data["turns"], f"{where}: turns") if "turns" in data else None
    if kind == "multi_turn" and turns is None:
        raise WorkloadError(f"{where}: turns: required for kind multi_turn (user turns per conversation)")
    return Workload(
        name=_str(data, "name", where),
        kind=kind,
        api=api,
        weight=weight,
        stream=stream,
        models=_models(data.get("model", "auto"), f"{where}: model"),
        prompt_tokens=_distribution(data.get("prompt_tokens"), f"{where}: prompt_tokens"),
        output_tokens=_distribution(data.get("output_tokens"), f"{where}: output_tokens"),
        turns=turns,
        description=str(data.get("description", "")),
        source=where,
    )


_DIST_FIELDS = {
    "fixed": {"value"},
    "uniform": set(),
    "normal": {"mean", "sd"},
    "lognormal": {"median", "sigma"},
}


def _distribution(data: Any, where: str) -> Distribution:
    if isinstance(data, int) and not isinstance(data, bool) and data >= 1:
        return Distribution("fixed", data, data, value=data)
    if not isinstance(data, dict):
        raise WorkloadError(f"{where}: a positive integer or a mapping with dist, min, max (and its parameters)")
    dist = data.get("dist")
    if dist not in _DIST_FIELDS:
        raise WorkloadError(f"{where}.dist: one of {', '.join(_DIST_FIELDS)} (got {dist!r})")
    needed = _DIST_FIELDS[dist]
    _only(data, {"dist", "min", "max", *needed}, where)
    low, high = (int(_number(data, key, where, default=None) or 0) for key in ("min", "max"))
    if dist == "fixed":
        value = int(_number(data, "value", where, default=None) or 0)
        low, high = data.get("min", value), data.get("max", value)
        if value < 1:
            raise WorkloadError(f"{where}.value: an integer >= 1 is required")
        return Distribution("fixed", int(low), int(high), value=value)
    if low < 1 or high < low:
        raise WorkloadError(f"{where}: min and max are required, 1 <= min <= max (got min={low}, max={high})")
    params = {key: _number(data, key, where, default=None) for key in needed}
    missing = [key for key, value in params.items() if value is None]
    if missing:
        raise WorkloadError(f"{where}: dist {dist} needs {', '.join(sorted(missing))}")
    if dist == "lognormal" and (params["median"] <= 0 or params["sigma"] < 0):
        raise WorkloadError(f"{where}: lognormal needs median > 0 and sigma >= 0")
    if dist == "normal" and params["sd"] < 0:
        raise WorkloadError(f"{where}.sd: must be >= 0")
    return Distribution(dist, low, high, **params)


def _models(data: Any, where: str) -> tuple[tuple[str, float], ...]:
    if isinstance(data, str) and data:
        return ((data, 1.0),)
    if not isinstance(data, dict) or not data:
        raise WorkloadError(f"{where}: a model name, or a mapping of model name to share (e.g. {{auto: 0.9}})")
    for name, share in data.items():
        if not isinstance(share, int | float) or isinstance(share, bool) or share <= 0:
            raise WorkloadError(f"{where}.{name}: a share > 0 is required (got {share!r})")
    total = sum(data.values())
    return tuple((str(name), share / total) for name, share in data.items())


def _normalised(parts: list[tuple[Workload, float]]) -> tuple[tuple[Workload, float], ...]:
    total = sum(weight for _, weight in parts)
    return tuple((workload, weight / total) for workload, weight in parts)


def _only(data: dict[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise WorkloadError(f"{where}: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")


def _str(data: dict[str, Any], key: str, where: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value:
        raise WorkloadError(f"{where}: {key}: a non-empty string is required")
    return value


def _number(data: dict[str, Any], key: str, where: str, *, default: float | None) -> Any:
    value = data.get(key, default)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise WorkloadError(f"{where}: {key}: a number is required (got {value!r})")
    return value
