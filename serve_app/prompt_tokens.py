"""Prompt token counts for routing: the cheap estimate, made exact with the local model's tokenizer near the limit.

The cheap estimate (`routing.estimate_prompt_tokens`) is the fast path. Only where it cannot tell whether an `auto`
request fits the local model (`routing.count_plan`) does the tokenizer count: the message text exactly, plus what
the chat template adds per conversation and per message, measured once when the tokenizer loads by rendering the
template around probe messages. Loading reads files (once per replica; retried while they are absent, as the model
application may still be building them); counting runs in a worker thread (the tokenizer releases the GIL for a
batch), so the event loop never waits for it. Without a tokenizer every count is the cheap estimate.
"""

from __future__ import annotations

import asyncio
import json
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from serve_app.config import LocalBackendArgs, RoutingPolicy
from serve_app.protocol import ChatCompletionRequest
from serve_app.routing import count_plan, estimate_prompt_tokens, local_prompt_budget, prompt_texts

logger = logging.getLogger(__name__)

AUTO = "auto"
RETRY_S = 10.0  # how often a configured tokenizer that was not found is looked for again
# Where the model application finds the models it builds (serve_app.smoke_model, serve_app.default_model; the router
# may not import those engine-side modules, a unit test pins these names to theirs).
CACHE_DIR_ENV = "HYBRID_LLM_CACHE_DIR"
LOCAL_MODEL_ENV = "LOCAL_MODEL"
SMOKE_MODEL_DIR = "smoke-model-v1"
DEFAULT_MODEL_DIR = "smollm2-135m-instruct-v1"
_PROBE = "Hello"


@dataclass(frozen=True, slots=True)
class TemplateOverhead:
    """Tokens the chat template adds: once (BOS, a default system prompt, the generation prompt) and per message."""

    fixed: int
    per_message: int
    fixed_after_system: int  # the once-part of a conversation that opens with a system message (no default one)
    measured: bool  # False: the template could not be rendered here, the cheap estimate's per-message overhead

    def tokens(self, *, messages: int, opens_with_system: bool) -> int:
        return (self.fixed_after_system if opens_with_system else self.fixed) + self.per_message * messages


UNMEASURED = TemplateOverhead(fixed=0, per_message=4, fixed_after_system=0, measured=False)


@dataclass(frozen=True)
class LocalTokenizer:
    """The local model's tokenizer (a `tokenizers.Tokenizer`) and its chat template's overhead."""

    tokenizer: Any
    overhead: TemplateOverhead
    source: str

    def count(self, texts: list[str], *, messages: int, opens_with_system: bool = False) -> int:
        """The prompt's tokens: every text piece, plus the template's overhead for `messages` messages."""
        encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
        encodings = encode(texts, add_special_tokens=False) if texts else []
        overhead = self.overhead.tokens(messages=messages, opens_with_system=opens_with_system)
        return overhead + sum(len(e.ids) for e in encodings)

    @classmethod
    def load(cls, path: Path) -> LocalTokenizer:
        """Reads tokenizer.json at `path` and measures the chat template next to it (when jinja2 can render it)."""
        from tokenizers import Tokenizer

        tokenizer = Tokenizer.from_file(str(path))
        count = lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)  # noqa: E731
        overhead = UNMEASURED
        render = _template_renderer(path.parent)
        if render is not None:
            try:
                overhead = measure_overhead(count, render)
            except Exception:
                logger.warning("the chat template next to %s could not be rendered", path, exc_info=True)
        return cls(tokenizer, overhead, str(path))


def measure_overhead(count: Callable[[str], int], render: Callable[[list[dict[str, str]]], str]) -> TemplateOverhead:
    """The template's fixed and per-message tokens, from renderings of one and three probe messages, and the fixed
    part when a system message opens the conversation (templates add a default system prompt only without one)."""
    text = count(_PROBE)

    def total(*roles: str) -> int:
        return count(render([{"role": role, "content": _PROBE} for role in roles]))

    one, three = total("user"), total("user", "assistant", "user")
    per_message = max(0, math.ceil((three - one) / 2) - text)
    fixed = max(0, one - per_message - text)
    try:
        after_system = max(0, total("system", "user") - 2 * (per_message + text))
    except Exception:  # the template refuses system messages: count as without one
        logger.debug("the chat template refuses a system message", exc_info=True)
        after_system = fixed
    return TemplateOverhead(fixed=fixed, per_message=per_message, fixed_after_system=after_system, measured=True)


def _template_renderer(directory: Path) -> Callable[[list[dict[str, str]]], str] | None:
    """Renders the chat template of the tokenizer in `directory` as transformers does, or None without one."""
    config_file = directory / "tokenizer_config.json"
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    template_file = directory / "chat_template.jinja"
    template = template_file.read_text() if template_file.is_file() else config.get("chat_template")
    if isinstance(template, list):  # named templates: the default one
        template = next((t.get("template") for t in template if t.get("name") == "default"), None)
    if not isinstance(template, str):
        return None
    try:
        from jinja2.ext import loopcontrols
        from jinja2.sandbox import ImmutableSandboxedEnvironment
    except ImportError:
        return None

    def raise_exception(message: str) -> None:
        raise ValueError(message)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=[loopcontrols])
    env.globals.update(raise_exception=raise_exception, strftime_now=lambda fmt: datetime.now().strftime(fmt))
    compiled = env.from_string(template)
    specials = {name: _token_text(config.get(name)) for name in ("bos_token", "eos_token", "pad_token", "unk_token")}
    return lambda messages: compiled.render(messages=messages, add_generation_prompt=True, **specials)


def _token_text(token: Any) -> str:
    return str(token.get("content", "")) if isinstance(token, dict) else str(token or "")


def tokenizer_path(setting: str, environ: Mapping[str, str]) -> Path | None:
    """Where the tokenizer `routing.tokenizer` names is on this machine (its tokenizer.json), or None."""
    if setting == AUTO:
        source = environ.get(LOCAL_MODEL_ENV, "").strip()
        root = Path(environ.get(CACHE_DIR_ENV) or Path.home() / ".cache" / "hybrid-llm")
        if source == "smoke":
            setting = str(root / SMOKE_MODEL_DIR)
        elif not source:
            setting = str(root / DEFAULT_MODEL_DIR)
        else:
            setting = source
    path = Path(setting).expanduser()
    if path.is_file():
        return path
    if (path / "tokenizer.json").is_file():
        return path / "tokenizer.json"
    return _hf_cached(setting)


def _hf_cached(repo_id: str) -> Path | None:
    """tokenizer.json of a Hugging Face model id in this machine's HF cache (never downloads)."""
    if repo_id.count("/") != 1 or repo_id.startswith(("/", ".", "~")):
        return None
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None
    try:
        found = try_to_load_from_cache(repo_id, "tokenizer.json")
    except Exception:
        return None
    return Path(found) if isinstance(found, str) else None


def _utf8_len(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


class PromptCounter:
    """One replica's prompt counts: the cheap estimate, and the tokenizer's where `routing.count_plan` asks for it."""

    def __init__(
        self,
        policy: RoutingPolicy,
        local: LocalBackendArgs,
        *,
        tokenizer: LocalTokenizer | None = None,
        looks_for: str | None = None,
        environ: Mapping[str, str] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """`looks_for`: the `routing.tokenizer` setting `refresh` keeps looking for while `tokenizer` is None;
        without it (and without a tokenizer) the counter is the cheap estimate only."""
        self._policy = policy
        self._local = local
        self._tokenizer = tokenizer
        self._looks_for = looks_for
        self._environ = dict(environ or {})
        self._clock = clock
        self._next_try = 0.0
        self._loading = threading.Lock()  # held while a load runs (in a worker thread)
        self._warned = False
        self._detail = "routing.tokenizer is not set" if tokenizer is None and looks_for is None else ""
        self.exact_counts = 0  # prompts the tokenizer counted (the band's traffic), for /readyz

    @classmethod
    def load(
        cls,
        policy: RoutingPolicy,
        local: LocalBackendArgs,
        *,
        environ: Mapping[str, str],
        clock: Callable[[], float] = time.monotonic,
    ) -> PromptCounter:
        """The counter of a router replica: with the tokenizer `policy.tokenizer` names when it is on this machine
        (else it keeps looking). Reads files here and now: call it off the event loop."""
        counter = cls(policy, local, looks_for=policy.tokenizer, environ=environ, clock=clock)
        if policy.tokenizer is None:
            logger.info("prompt counts: the cheap estimate only (routing.tokenizer is not set)")
        else:
            counter._next_try = counter._clock() + RETRY_S
            counter._try_load()
        return counter

    @property
    def exact(self) -> bool:
        return self._tokenizer is not None

    async def prompt_tokens(self, request: ChatCompletionRequest) -> int:
        """The request's prompt tokens as routing sees them: exact where the tokenizer counted, else estimated."""
        estimate = estimate_prompt_tokens(request, chars_per_token=self._policy.chars_per_token)
        local = self._tokenizer
        if local is None or request.model != AUTO:  # only `auto` is routed by length
            return estimate
        texts = [text for text in prompt_texts(request) if text]
        messages = len(request.messages)
        opens_with_system = request.messages[0].role == "system"  # templates test for `system` (not `developer`)
        overhead = local.overhead.tokens(messages=messages, opens_with_system=opens_with_system)
        byte_bound = overhead + sum(_utf8_len(t) + 1 for t in texts)
        budget = local_prompt_budget(output_tokens=request.output_budget, policy=self._policy, local=self._local)
        if count_plan(estimate=estimate, byte_bound=byte_bound, budget=budget, policy=self._policy) == "estimate":
            return min(estimate, byte_bound)
        try:
            tokens = await asyncio.to_thread(local.count, texts, messages=messages, opens_with_system=opens_with_system)
        except Exception:
            logger.warning("the tokenizer failed to count a prompt; the cheap estimate routes it", exc_info=True)
            return estimate
        self.exact_counts += 1
        return tokens

    def refresh(self) -> None:
        """Looks for a configured tokenizer not loaded yet (at most every RETRY_S); loads it off the event loop when
        one runs. Called at start and by readiness checks."""
        if self._tokenizer is not None or self._looks_for is None:
            return
        now = self._clock()
        if now < self._next_try or not self._loading.acquire(blocking=False):  # due, and no load under way
            return
        self._next_try = now + RETRY_S
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            self._load_once()
            return
        loop.run_in_executor(None, self._load_once)

    def _load_once(self) -> None:
        try:
            self._try_load()
        finally:
            self._loading.release()

    def _try_load(self) -> None:
        setting = self._looks_for
        assert setting is not None
        path = tokenizer_path(setting, self._environ)
        if path is None:
            self._detail = f"the tokenizer routing.tokenizer={setting!r} names is not on this machine"
        else:
            try:
                self._tokenizer = LocalTokenizer.load(path)
            except Exception as exc:
                self._detail = f"the tokenizer at {path} could not be loaded: {exc}"
            else:
                overhead = self._tokenizer.overhead
                logger.info(
                    "prompt counts near the local limit: the local model's tokenizer at %s (template overhead %d "
                    "+ %d per message%s)",
                    path,
                    overhead.fixed,
                    overhead.per_message,
                    "" if overhead.measured else ", not measured: no renderable chat template",
                )
                return
        if not self._warned:
            self._warned = True
            logger.warning(
                "prompt counts: the cheap estimate only (%s); looking again every %g s", self._detail, RETRY_S
            )

    def status(self) -> dict[str, Any]:
        """What /readyz says about prompt counting."""
        local = self._tokenizer
        if local is None:
            return {"counter": "estimate", "detail": self._detail}
        return {
            "counter": "tokenizer",
            "tokenizer": local.source,
            "template_overhead": {
                "fixed": local.overhead.fixed,
                "fixed_after_system": local.overhead.fixed_after_system,
                "per_message": local.overhead.per_message,
                "measured": local.overhead.measured,
            },
            "exact_counts": self.exact_counts,
        }
