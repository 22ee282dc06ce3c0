"""Seeded request bodies for each workload kind: realistic prompts of a drawn length, tools, generated PNGs; pure.

Text is assembled from sentence templates so that its length in tokens is what the workload drew (about four
characters per token, the ratio of English text under the usual BPE tokenizers): long documents exceed the
local context window and meet the router's length rules as they would in production, tool definitions and
images meet its tool and image rules.
"""

from __future__ import annotations

import base64
import random
import struct
import zlib
from dataclasses import dataclass, field
from typing import Any

from serve_app.sim.workload import Workload

CHARS_PER_TOKEN = 4.0

_SUBJECTS = [
    "The quarterly revenue report",
    "Our customer support backlog",
    "The new onboarding flow",
    "The data pipeline migration",
    "The warehouse in Rotterdam",
    "The mobile release candidate",
    "The vendor contract renewal",
    "The incident on the payments cluster",
    "The hiring plan for the platform team",
    "The marketing campaign in Spain",
]
_VERBS = [
    "shows",
    "depends on",
    "was delayed by",
    "improved after",
    "needs a decision on",
    "is blocked by",
    "reported",
    "reduced",
]
_OBJECTS = [
    "a 14% increase in churn among annual plans",
    "the late delivery of the replacement servers",
    "three unresolved questions about data retention",
    "a budget overrun of roughly 40,000 euros",
    "the retirement of the legacy billing service",
    "a spike in p95 latency during the Monday batch",
    "feedback from twelve enterprise customers",
    "the audit findings on access reviews",
    "an average handling time of 7 minutes per ticket",
    "the switch to weekly release trains",
]
_TAILS = [
    "according to the latest dashboard.",
    "which the steering committee discussed on Tuesday.",
    "and the owners expect a fix by the end of the month.",
    "although the root cause is still being investigated.",
    "so the team proposes to revisit the estimate.",
    "as noted in the appendix of the previous report.",
]
_QUESTIONS = [
    "What is the capital of Australia, and why was it chosen?",
    "Can you suggest a name for a small bakery that sells sourdough?",
    "How do I politely decline a meeting invitation?",
    "What are three quick tips for a better night's sleep?",
    "Explain the difference between a list and a tuple in one paragraph.",
    "What should I pack for a weekend hike in late autumn?",
    "Translate 'good morning, how are you?' into French and Spanish.",
    "Give me a short motivational quote for a Monday.",
    "How many minutes are there in a week?",
    "Write a two-line poem about coffee.",
]
_CODE = [
    (
        "python",
        "def merge(a, b):\n    out = []\n    while a and b:\n"
        "        out.append(a.pop(0) if a[0] < b[0] else b.pop(0))\n"
        "    return out + a + b\n",
    ),
    (
        "javascript",
        "async function fetchAll(urls) {\n  const out = [];\n  for (const u of urls) {\n"
        "    out.push(await fetch(u).then(r => r.json()));\n  }\n  return out;\n}\n",
    ),
    ("sql", "SELECT c.name, SUM(o.total)\nFROM customers c JOIN orders o ON o.customer_id = c.id\nGROUP BY c.name;\n"),
    (
        "go",
        "func worker(jobs <-chan int, results chan<- int) {\n\tfor j := range jobs {\n\t\tresults <- j * 2\n\t}\n}\n",
    ),
]
_CODE_ASKS = [
    "Why is this slow on large inputs, and how would you fix it?",
    "Is there a bug in this code? Explain briefly.",
    "Rewrite this to be more idiomatic and explain the change.",
    "Add error handling to this code.",
]
_TOOLS = [
    {
        "name": "get_weather",
        "description": "Get the current weather for a city.",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
            "required": ["city"],
        },
    },
    {
        "name": "search_orders",
        "description": "Search a customer's orders by status and date range.",
        "parameters": {
            "type": "object",
            "properties": {
                "customer_id": {"type": "string"},
                "status": {"type": "string", "enum": ["open", "shipped", "returned"]},
                "since": {"type": "string", "description": "ISO date"},
            },
            "required": ["customer_id"],
        },
    },
]
_TOOL_ASKS = [
    "What's the weather like in Lisbon right now?",
    "Find the open orders of customer C-1042 since March.",
    "Is it warmer in Oslo or in Madrid today?",
    "Which orders of customer C-77 were returned this year?",
]


@dataclass(frozen=True, slots=True)
class PlannedRequest:
    """One request the simulator will send: its API, the SDK call's arguments and the features routing sees."""

    workload: str
    api: str  # openai | anthropic
    stream: bool
    model: str
    max_tokens: int
    body: dict[str, Any] = field(hash=False)  # keyword arguments of the SDK call, without model/stream/max_tokens
    prompt_chars: int = 0
    has_tools: bool = False
    has_images: bool = False


def plan(workload: Workload, rng: random.Random) -> PlannedRequest:
    """Draws one request of `workload` from `rng` (same rng state, same request)."""
    prompt_tokens = workload.prompt_tokens.sample(rng)
    max_tokens = workload.output_tokens.sample(rng)
    stream = rng.random() < workload.stream
    model = workload.pick_model(rng)
    chars = int(prompt_tokens * CHARS_PER_TOKEN)
    tools: list[dict[str, Any]] = []
    images = 0
    kind = workload.kind
    if kind == "multi_turn":
        assert workload.turns is not None
        messages = _conversation(rng, chars, workload.turns.sample(rng))
    elif kind == "json_extract":
        record = _paragraph(rng, max(chars - 260, 80))
        messages = [
            {
                "role": "system",
                "content": "You extract structured data. Answer with one JSON object only, no prose.",
            },
            {
                "role": "user",
                "content": 'Classify the note below as one of "incident", "finance", "people", "product" and '
                'extract {"category": str, "owner": str|null, "amount_eur": number|null, "due": str|null}.'
                f"\n\nNote:\n{record}",
            },
        ]
    elif kind in ("summarise", "long_context"):
        document = _document(rng, chars)
        ask = (
            "Summarise the report above in five bullet points for an executive."
            if kind == "summarise"
            else "Using only the notes above, list every decision that is still open and who owns it."
        )
        messages = [{"role": "user", "content": f"{document}\n\n{ask}"}]
    elif kind == "code":
        language, snippet = rng.choice(_CODE)
        context = _paragraph(rng, max(chars - len(snippet) - 80, 0)) if chars > len(snippet) + 200 else ""
        text = f"{context}\n\n```{language}\n{snippet}```\n{rng.choice(_CODE_ASKS)}".strip()
        messages = [{"role": "user", "content": text}]
    elif kind == "tools":
        tools = list(_TOOLS)
        messages = [{"role": "user", "content": rng.choice(_TOOL_ASKS)}]
    elif kind == "images":
        images = 1
        ask = rng.choice(["What colours dominate this picture?", "Describe this chart in one sentence."])
        messages = [{"role": "user", "content": ask, "image": png_data_url(rng, 16)}]
    else:
        question = rng.choice(_QUESTIONS)
        context = _paragraph(rng, chars - len(question)) if chars > len(question) + 40 else ""
        messages = [{"role": "user", "content": f"{context}\n\n{question}".strip()}]
    prompt_chars = sum(len(m["content"]) for m in messages)
    body = _anthropic_body(messages, tools) if workload.api == "anthropic" else _openai_body(messages, tools)
    return PlannedRequest(
        workload=workload.name,
        api=workload.api,
        stream=stream,
        model=model,
        max_tokens=max_tokens,
        body=body,
        prompt_chars=prompt_chars,
        has_tools=bool(tools),
        has_images=bool(images),
    )


def _openai_body(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
    out = []
    for message in messages:
        if "image" in message:
            content = [
                {"type": "text", "text": message["content"]},
                {"type": "image_url", "image_url": {"url": message["image"]}},
            ]
            out.append({"role": message["role"], "content": content})
        else:
            out.append({"role": message["role"], "content": message["content"]})
    body: dict[str, Any] = {"messages": out}
    if tools:
        body["tools"] = [{"type": "function", "function": tool} for tool in tools]
    return body


def _anthropic_body(messages: list[dict[str, Any]], tools: list[dict[str, Any]]) -> dict[str, Any]:
    body: dict[str, Any] = {}
    out = []
    for message in messages:
        if message["role"] == "system":
            body["system"] = message["content"]
        elif "image" in message:
            data = message["image"].split(",", 1)[1]
            image = {"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": data}}
            out.append({"role": message["role"], "content": [{"type": "text", "text": message["content"]}, image]})
        else:
            out.append({"role": message["role"], "content": message["content"]})
    body["messages"] = out
    if tools:
        body["tools"] = [
            {"name": t["name"], "description": t["description"], "input_schema": t["parameters"]} for t in tools
        ]
    return body


def _sentence(rng: random.Random) -> str:
    return f"{rng.choice(_SUBJECTS)} {rng.choice(_VERBS)} {rng.choice(_OBJECTS)}, {rng.choice(_TAILS)}"


def _paragraph(rng: random.Random, chars: int) -> str:
    parts: list[str] = []
    size = 0
    while size < chars:
        sentence = _sentence(rng)
        parts.append(sentence)
        size += len(sentence) + 1
    return " ".join(parts)[: max(chars, 0)]


def _document(rng: random.Random, chars: int) -> str:
    sections = []
    size = 0
    number = 1
    while size < chars:
        body = _paragraph(rng, min(900, chars - size))
        section = f"## {number}. {rng.choice(_SUBJECTS)}\n{body}"
        sections.append(section)
        size += len(section) + 2
        number += 1
    return "\n\n".join(sections)


def _conversation(rng: random.Random, chars: int, turns: int) -> list[dict[str, Any]]:
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are a helpful, concise assistant."}]
    per_turn = max(chars // max(turns, 1) // 2, 40)
    for turn in range(turns):
        messages.append({"role": "user", "content": f"{_paragraph(rng, per_turn)} {rng.choice(_QUESTIONS)}"})
        if turn < turns - 1:
            messages.append({"role": "assistant", "content": _paragraph(rng, per_turn)})
    return messages


def png_data_url(rng: random.Random, size: int) -> str:
    """A small RGB PNG (a two-colour gradient) as a data URL; valid PNG, built with the standard library."""
    start = [rng.randrange(256) for _ in range(3)]
    end = [rng.randrange(256) for _ in range(3)]
    rows = []
    for y in range(size):
        row = bytearray(b"\x00")  # filter type none
        for x in range(size):
            t = (x + y) / (2 * size - 2) if size > 1 else 0.0
            row += bytes(round(a + (b - a) * t) for a, b in zip(start, end, strict=True))
        rows.append(bytes(row))
    header = struct.pack(">IIBBBBB", size, size, 8, 2, 0, 0, 0)
    png = b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"".join(rows)))
    png += _chunk(b"IEND", b"")
    return "data:image/png;base64," + base64.b64encode(png).decode()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
