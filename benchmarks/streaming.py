"""Streamed text generation: a new stream beside running ones, time to first chunk, chunks/s.

    python -m benchmarks.streaming                  # full: 2 rounds, 3 s warm-up + 10 s each
    python -m benchmarks.streaming --quick          # 1 round, 1 s warm-up + 2 s each
    python -m benchmarks.streaming --out report.md --json raw.json

Contenders, one after the other, never two at once, all serving the tiny offline GPT-2 of
``examples/tiny_lm.py``; the /generate ones at ``POST /generate`` (one event or line per text
piece):

- joining: ``mfk serve examples/generate.py`` (``join`` / ``step`` / ``leave``, up to 64
  streams in the batch: a request joins the running batch at the next step);
- static: ``mfk serve benchmarks/apps/generate_static.py:GeneratorStatic`` (the same decoding
  as a batched generator, batches of up to 16, four of them at a time: a batch is formed once
  and runs to its end);
- unbatched: ``mfk serve benchmarks/apps/generate_unbatched.py:GeneratorUnbatched`` (the
  generator with ``max_batch_size=1``: each stream steps the model on its own);
- litserve: LitServe 0.2.19's ``ContinuousBatchingLoop`` over the same decoding
  (``benchmarks/apps/litserve_generate.py``, NDJSON lines; needs
  ``pip install -r benchmarks/requirements.txt``);
- chat: ``mfk serve examples/chat.py`` (``TinyChat``, up to 64 chats decoded together) and
  chat-generate: ``mfk serve benchmarks/apps/chat_generate.py:TinyChatGenerate`` (one
  generator per chat), both at ``POST /v1/chat/completions`` with ``"stream": true``; only
  ``chat.completion.chunk`` events with text in ``choices[0].delta.content`` count as chunks
  (not the role chunk, the finish chunk or ``data: [DONE]``), so the first chunk is the first
  token.

Each server is started, checked (the run stops if a streamed text differs: the /generate
servers against ``tiny_lm.reference_text``, chat against its own non-streamed answer to the
same prompt, both greedy), then:

- newcomers (the /generate servers): a new stream's time to first chunk alone (idle), and
  when it arrives 50 to 100 ms after ``--running`` (8) long streams (200 tokens each, sent
  10 ms apart, as separate clients arrive) began; each round starts the long streams afresh.
  One model step under that load is the median gap between two chunks of the long streams;
- load: closed-loop asyncio clients (httpx, in this process) at each concurrency: a warm-up,
  then a measured window. Chunks are counted by arrival time inside the window; latency
  figures come from the requests sent inside it, and the load goes on until the last of those
  has finished. A chunk is one text piece: one token, except where a character spans two.

Every server is stopped, also on failure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import importlib
import itertools
import json
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx

from benchmarks.contenders import BIN, ROUTE, Contender, serving
from benchmarks.load import _percentile
from benchmarks.memory import tree_cpu_seconds
from benchmarks.serving import machine

__all__ = [
    "CONTENDERS",
    "Measurement",
    "Newcomers",
    "Preset",
    "Stream",
    "Window",
    "best_of",
    "main",
]

GENERATE = "/generate"
PROMPTS = ("The lighthouse", "In the morning", "The keeper climbed the narrow stairs and", "Bread")
CHAT = "/v1/chat/completions"
CHAT_MODEL = "tiny-chat"
CHAT_PROMPTS = (
    "Where did the ship sail?",
    "Tell me about the lighthouse.",
    "How do you make bread?",
    "What did the keeper do?",
)
REQUEST_TIMEOUT_S = 60.0  # one whole stream
DRAIN_TIMEOUT_S = 60.0  # after the window, for the streams sent inside it to finish
# The newcomer measurement: long streams the tiny model continues for all of their 200 tokens
# (no eos before), and the short request that arrives beside them.
LONG_PROMPTS = ("the", "them lit", "the narrow only", "trimmed it pages on")
LONG_TOKENS = 200
LONG_APART_S = 0.01  # the long streams arrive one after the other, as separate clients do
NEWCOMER = ("In the morning", 12)


@dataclass(frozen=True)
class Preset:
    seconds: float  # measured window per concurrency
    warmup: float  # load before the window, unmeasured
    rounds: int  # every contender is measured this many times


FULL = Preset(seconds=10, warmup=3, rounds=2)
QUICK = Preset(seconds=2, warmup=1, rounds=1)


class ErrorEvent(ValueError):
    """The server sent an error event inside a stream."""


@dataclass(frozen=True)
class StreamApi:
    """How a contender is asked to stream, and which of its events carry text."""

    path: str
    prompts: tuple[str, ...]
    body: Callable[[str, int], dict[str, Any]]  # (prompt, max tokens) -> the JSON body
    # An event's data -> its text, or None for an event without any; None here: every event
    # is a text chunk, its text in ``"text"`` (parsed only when the text is kept).
    text: Callable[[str], str | None] | None = None
    reference: str = "tiny_lm.reference_text"  # what its streamed text must equal
    ndjson: bool = False  # one JSON line per chunk (``{"text": ...}``) instead of SSE events


def _chat_text(data: str) -> str | None:
    data = data.strip()
    if data == "[DONE]":
        return None
    event = json.loads(data)
    if "error" in event:
        raise ErrorEvent(f"error event: {data[:200]}")
    choices = event.get("choices") or [{}]
    content = (choices[0].get("delta") or {}).get("content")
    return str(content) if content else None


GENERATE_API = StreamApi(
    GENERATE, PROMPTS, lambda prompt, n: {"prompt": prompt, "max_new_tokens": n}
)
CHAT_API = StreamApi(
    CHAT,
    CHAT_PROMPTS,
    lambda prompt, n: {
        "model": CHAT_MODEL,
        "messages": [{"role": "user", "content": prompt}],
        "stream": True,
        "max_tokens": n,
    },
    text=_chat_text,
    reference="its non-streamed answer",
)


LITSERVE_API = StreamApi(GENERATE, PROMPTS, GENERATE_API.body, ndjson=True)


@dataclass(frozen=True)
class StreamContender(Contender):
    api: StreamApi = GENERATE_API
    ready_path: str = "/readyz"  # answers 200 once the model is loaded
    in_process: str | None = None  # ``module:Class``: newcomers also timed without HTTP

    @property
    def generates(self) -> bool:
        """Serves ``POST /generate`` (the newcomer measurement applies)."""
        return self.api.path == GENERATE


def _mfk_serve(target: str) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        return [
            *(str(BIN / "mfk"), "serve", target),
            *("--host=127.0.0.1", f"--port={port}", "--log-level=warning"),
        ]

    return command


def _module(name: str) -> Callable[[int], list[str]]:
    def command(port: int) -> list[str]:
        return [sys.executable, "-m", f"benchmarks.apps.{name}", f"--port={port}"]

    return command


CONTENDERS: dict[str, StreamContender] = {
    c.key: c
    for c in (
        StreamContender(
            "joining",
            "mfk serve, joining, batch 64",
            _mfk_serve("examples/generate.py"),
            in_process="examples.generate:Generator",
        ),
        StreamContender(
            "static",
            "mfk serve, generator, batch 16",
            _mfk_serve("benchmarks/apps/generate_static.py:GeneratorStatic"),
            in_process="benchmarks.apps.generate_static:GeneratorStatic",
        ),
        StreamContender(
            "unbatched",
            "mfk serve, generator, batch 1",
            _mfk_serve("benchmarks/apps/generate_unbatched.py:GeneratorUnbatched"),
        ),
        StreamContender(
            "litserve",
            "LitServe ContinuousBatchingLoop, 64",
            _module("litserve_generate"),
            requires="litserve",
            api=LITSERVE_API,
            ready_path="/health",
        ),
        StreamContender(
            "chat",
            "mfk serve, OpenAI chat, joining, batch 64",
            _mfk_serve("examples/chat.py"),
            api=CHAT_API,
        ),
        StreamContender(
            "chat-generate",
            "mfk serve, OpenAI chat, a generator each",
            _mfk_serve("benchmarks/apps/chat_generate.py:TinyChatGenerate"),
            api=CHAT_API,
        ),
    )
}


# -- one stream --------------------------------------------------------------------------------


@dataclass
class Stream:
    """One request: when it was sent, and when its chunks arrived (``perf_counter`` seconds)."""

    sent: float
    arrivals: list[float] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    error: str | None = None  # non-200, an ``event: error``, no chunk at all, or an exception
    finished: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.arrivals)

    @property
    def first_s(self) -> float:
        return self.arrivals[0] - self.sent

    @property
    def rate(self) -> float | None:
        """Chunks/s after the first: (chunks - 1) / (last - first arrival)."""
        span = self.arrivals[-1] - self.arrivals[0] if len(self.arrivals) > 1 else 0.0
        return (len(self.arrivals) - 1) / span if span > 0 else None


async def stream_once(
    client: httpx.AsyncClient,
    url: str,
    prompt: str,
    max_new_tokens: int,
    *,
    keep_text: bool = False,
    started: Callable[[Stream], object] | None = None,
    api: StreamApi = GENERATE_API,
) -> Stream:
    """POST one prompt and read its event stream to the end; ``started`` sees it sent."""
    body = api.body(prompt, max_new_tokens)
    found = Stream(sent=time.perf_counter())
    if started is not None:
        started(found)
    try:
        async with client.stream("POST", url, json=body) as answer:
            if answer.status_code != 200:
                await answer.aread()
                found.error = f"HTTP {answer.status_code}: {answer.text[:200]}"
                return found
            failed = False
            async for line in answer.aiter_lines():
                if api.ndjson:
                    if line.strip():
                        found.arrivals.append(time.perf_counter())
                        if keep_text:
                            found.texts.append(str(json.loads(line)["text"]))
                elif line.startswith("event: error"):
                    failed = True
                elif line.startswith("data:"):
                    if failed:
                        found.error = f"error event: {line[5:].strip()[:200]}"
                        break
                    if api.text is None:
                        found.arrivals.append(time.perf_counter())
                        if keep_text:
                            found.texts.append(str(json.loads(line[5:])["text"]))
                    else:
                        arrived = time.perf_counter()
                        if text := api.text(line[5:]):
                            found.arrivals.append(arrived)
                            if keep_text:
                                found.texts.append(text)
    except ErrorEvent as exc:
        found.error = str(exc)
    except (httpx.HTTPError, OSError, ValueError, KeyError) as exc:
        found.error = f"{type(exc).__name__}: {exc}"
    if found.error is None and not found.arrivals:
        found.error = "the stream ended without a chunk"
    found.finished = True
    return found


# -- the correctness check ---------------------------------------------------------------------


def reference_texts(model_dir: Path, max_new_tokens: int) -> dict[str, str]:
    """What transformers' ``generate(do_sample=False)`` continues each prompt with."""
    from examples import tiny_lm

    model, tokenizer = tiny_lm.load(model_dir)
    return {p: tiny_lm.reference_text(model, tokenizer, p, max_new_tokens) for p in PROMPTS}


async def chat_answers(url: str, max_tokens: int) -> dict[str, str]:
    """Each chat prompt's non-streamed answer: ``choices[0].message.content``."""
    found: dict[str, str] = {}
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
        for prompt in CHAT_PROMPTS:
            answer = await client.post(
                url, json={**CHAT_API.body(prompt, max_tokens), "stream": False}
            )
            if answer.status_code != 200:
                raise RuntimeError(
                    f"non-streamed {prompt!r}: HTTP {answer.status_code}: {answer.text[:200]}"
                )
            found[prompt] = str(answer.json()["choices"][0]["message"]["content"])
    return found


async def _check(
    url: str, max_new_tokens: int, expected: dict[str, str], api: StreamApi = GENERATE_API
) -> list[str]:
    """Stream every prompt alone, then all at once; return what differs from ``expected``."""
    problems: list[str] = []
    prompts = api.prompts
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S) as client:
        alone = [
            await stream_once(client, url, p, max_new_tokens, keep_text=True, api=api)
            for p in prompts
        ]
        together = await asyncio.gather(
            *(stream_once(client, url, p, max_new_tokens, keep_text=True, api=api) for p in prompts)
        )
    for how, streams in (("alone", alone), ("concurrently", together)):
        for prompt, got in zip(prompts, streams, strict=True):
            if got.error is not None:
                problems.append(f"{prompt!r} ({how}): {got.error}")
            elif (text := "".join(got.texts)) != expected[prompt]:
                problems.append(
                    f"{prompt!r} ({how}): streamed {text!r}, expected {expected[prompt]!r}"
                )
    return problems


# -- the load ----------------------------------------------------------------------------------


@dataclass
class Window:
    """One concurrency on one server: the measured window and what happened in it."""

    concurrency: int
    seconds: float
    chunks: int  # arrived inside the window, from any stream
    chunks_per_s: float  # chunks / seconds: all streams together
    requests: int  # sent inside the window and streamed to the end
    first_p50_ms: float | None  # time to first chunk, over those requests
    first_p95_ms: float | None
    stream_rate: float | None  # median over those requests of their own chunks/s
    errors: int  # failed requests of the whole run, warm-up included
    server_cpu_s: float  # the server's process tree, inside the window
    server_cpu_s_per_1000_chunks: float | None
    client_cpu_s: float  # this process (the clients), inside the window
    first_ms: list[float] = field(default_factory=list, repr=False)  # per request, sorted


async def drive(
    url: str,
    server_pid: int,
    *,
    concurrency: int,
    max_new_tokens: int,
    warmup: float,
    seconds: float,
    api: StreamApi = GENERATE_API,
) -> Window:
    """``concurrency`` clients stream prompts back to back; measure ``seconds`` after ``warmup``.

    The load goes on past the window until every stream sent inside it has finished, so that
    each measured stream ran under the full concurrency.
    """
    prompts = itertools.cycle(api.prompts)
    streams: list[Stream] = []
    in_flight: dict[int, Stream] = {}  # by id(): the streams sent and not finished yet
    begun = time.perf_counter()
    start_at, stop_at = begun + warmup, begun + warmup + seconds
    measured_done = asyncio.Event()
    cpu: dict[str, float] = {}

    def note_done() -> None:
        if time.perf_counter() >= stop_at and not any(s.sent < stop_at for s in in_flight.values()):
            measured_done.set()

    def sent(stream: Stream) -> None:
        in_flight[id(stream)] = stream
        streams.append(stream)

    async def client_loop(client: httpx.AsyncClient) -> None:
        while not measured_done.is_set():
            got = await stream_once(
                client, url, next(prompts), max_new_tokens, started=sent, api=api
            )
            del in_flight[id(got)]
            note_done()

    async def clock() -> None:
        await asyncio.sleep(max(0.0, start_at - time.perf_counter()))
        cpu["server"], cpu["client"] = tree_cpu_seconds(server_pid), time.process_time()
        await asyncio.sleep(max(0.0, stop_at - time.perf_counter()))
        cpu["server"] = tree_cpu_seconds(server_pid) - cpu["server"]
        cpu["client"] = time.process_time() - cpu["client"]
        note_done()

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:
        tasks = [asyncio.create_task(client_loop(client)) for _ in range(concurrency)]
        await clock()
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(measured_done.wait(), DRAIN_TIMEOUT_S)
        measured_done.set()
        done, stuck = await asyncio.wait(tasks, timeout=REQUEST_TIMEOUT_S)
        for task in stuck:
            task.cancel()
        await asyncio.gather(*stuck, return_exceptions=True)
    if failed := [exc for task in done if (exc := task.exception()) is not None]:
        raise RuntimeError(f"a client failed: {failed[0]!r}") from failed[0]
    return _window(streams, concurrency, start_at, stop_at, cpu)


def _window(
    streams: list[Stream], concurrency: int, start_at: float, stop_at: float, cpu: dict[str, float]
) -> Window:
    measured = [s for s in streams if start_at <= s.sent < stop_at and s.ok]
    first_ms = sorted(1000 * s.first_s for s in measured)
    rates = [r for s in measured if (r := s.rate) is not None]
    seconds = stop_at - start_at
    chunks = sum(start_at <= t < stop_at for s in streams for t in s.arrivals)
    return Window(
        concurrency=concurrency,
        seconds=seconds,
        chunks=chunks,
        chunks_per_s=chunks / seconds,
        requests=len(measured),
        first_p50_ms=_percentile(first_ms, 50) if first_ms else None,
        first_p95_ms=_percentile(first_ms, 95) if first_ms else None,
        stream_rate=statistics.median(rates) if rates else None,
        errors=sum(1 for s in streams if s.finished and not s.ok),
        server_cpu_s=cpu["server"],
        server_cpu_s_per_1000_chunks=1000 * cpu["server"] / chunks if chunks else None,
        client_cpu_s=cpu["client"],
        first_ms=[round(ms, 3) for ms in first_ms],
    )


# -- a new stream beside running ones ---------------------------------------------------------


@dataclass
class Newcomers:
    """A new stream's time to first chunk, alone and beside ``running`` long streams."""

    running: int
    rounds: int
    idle_ms: list[float] = field(default_factory=list)  # alone, one after the other
    loaded_ms: list[float] = field(default_factory=list)  # beside the long streams
    step_ms: float | None = None  # median gap between two chunks of the long streams
    joined: int = 0  # rounds where the newcomer's first chunk came before every long one ended
    errors: int = 0

    @property
    def idle_p50(self) -> float | None:
        return _percentile(sorted(self.idle_ms), 50) if self.idle_ms else None

    @property
    def loaded_p50(self) -> float | None:
        return _percentile(sorted(self.loaded_ms), 50) if self.loaded_ms else None

    @property
    def loaded_p95(self) -> float | None:
        return _percentile(sorted(self.loaded_ms), 95) if self.loaded_ms else None

    @property
    def goal_ms(self) -> float | None:
        """Twice the idle time to first chunk plus one model step under the load."""
        idle = self.idle_p50
        return None if idle is None or self.step_ms is None else 2 * idle + self.step_ms


Ask = Callable[[str, int], Awaitable[Stream]]  # (prompt, max new tokens) -> the read stream


async def newcomers(url: str, api: StreamApi, *, running: int, rounds: int) -> Newcomers:
    """``rounds`` newcomers alone, then ``rounds`` times: ``running`` long streams sent 10 ms
    apart, and 50 to 100 ms after the last of them, a newcomer; over HTTP."""
    limits = httpx.Limits(max_connections=running + 2, max_keepalive_connections=running + 2)
    async with httpx.AsyncClient(timeout=REQUEST_TIMEOUT_S, limits=limits) as client:

        def ask(prompt: str, tokens: int) -> Awaitable[Stream]:
            return stream_once(client, url, prompt, tokens, api=api)

        return await _newcomers(ask, running, rounds)


async def newcomers_in_process(target: str, *, running: int, rounds: int) -> Newcomers:
    """The same newcomers against ``target``'s (``module:Class``) own backend in this
    process: the kit's batcher and the model, with no HTTP and no clients beside them."""
    from modal_fastapi_kit._backends.local import LocalBackend
    from modal_fastapi_kit._core.spec import service_spec
    from modal_fastapi_kit._core.state import LoadState

    module, name = target.split(":")
    spec = service_spec(getattr(importlib.import_module(module), name))
    backend = LocalBackend(spec)
    await backend.start()
    loop = asyncio.get_running_loop()

    async def ask(prompt: str, tokens: int) -> Stream:
        found = Stream(sent=time.perf_counter())
        try:
            item = spec.request_model(prompt=prompt, max_new_tokens=tokens)
            stream = await backend.submit(item, deadline=loop.time() + REQUEST_TIMEOUT_S)
            while True:
                try:
                    await stream.next(REQUEST_TIMEOUT_S)
                except StopAsyncIteration:
                    break
                found.arrivals.append(time.perf_counter())
        except Exception as exc:
            found.error = f"{type(exc).__name__}: {exc}"
        found.finished = True
        return found

    try:
        while backend.state is not LoadState.READY:
            if backend.state is LoadState.FAILED:
                raise RuntimeError(f"{target} failed to load: {backend.error}")
            await asyncio.sleep(0.05)
        return await _newcomers(ask, running, rounds)
    finally:
        await backend.stop()


async def _newcomers(ask: Ask, running: int, rounds: int) -> Newcomers:
    found = Newcomers(running=running, rounds=rounds)
    jitter = random.Random(0)
    gaps: list[float] = []
    for _ in range(rounds):
        alone = await ask(*NEWCOMER)
        if alone.ok:
            found.idle_ms.append(1000 * alone.first_s)
        else:
            found.errors += 1
    for number in range(rounds):
        tasks = [
            asyncio.create_task(
                _after(
                    i * LONG_APART_S,
                    ask(LONG_PROMPTS[(number + i) % len(LONG_PROMPTS)], LONG_TOKENS),
                )
            )
            for i in range(running)
        ]
        await asyncio.sleep((running - 1) * LONG_APART_S)  # the last one is sent
        await asyncio.sleep(0.05 + 0.05 * jitter.random())
        newcomer = await ask(*NEWCOMER)
        done = await asyncio.gather(*tasks)
        if not newcomer.ok or not all(s.ok for s in done):
            found.errors += 1
            continue
        found.loaded_ms.append(1000 * newcomer.first_s)
        found.joined += newcomer.arrivals[0] < min(s.arrivals[-1] for s in done)
        for s in done:
            gaps += [b - a for a, b in itertools.pairwise(s.arrivals)]
    found.step_ms = 1000 * statistics.median(gaps) if gaps else None
    return found


async def _after(seconds: float, stream: Awaitable[Stream]) -> Stream:
    await asyncio.sleep(seconds)
    return await stream


# -- one server, several rounds ----------------------------------------------------------------


class WrongText(RuntimeError):
    """A contender streamed something other than the reference continuation."""


@dataclass
class Measurement:
    """One contender in one round (or the best of several): a window per concurrency."""

    key: str
    label: str
    windows: list[Window] = field(default_factory=list)
    ready_seconds: float = 0.0
    error: str | None = None
    newcomers: Newcomers | None = None
    in_process: Newcomers | None = None  # the same, against the backend in this process

    def at(self, concurrency: int) -> Window | None:
        return next((w for w in self.windows if w.concurrency == concurrency), None)


def measure_server(
    key: str,
    concurrency: list[int],
    *,
    expected: dict[str, str] | None,
    max_new_tokens: int,
    seconds: float,
    warmup: float,
    log: IO[str],
    running: int = 8,
    newcomer_rounds: int = 0,
) -> Measurement:
    """Start ``key``, check its text, time newcomers beside ``running`` long streams (a
    /generate server, ``newcomer_rounds`` > 0), drive it at each concurrency, stop it.

    ``expected``: the /generate reference texts; chat's come from the server itself.
    """
    contender = CONTENDERS[key]
    api = contender.api
    found = Measurement(key=key, label=contender.label)
    with serving(contender, log) as server:
        url = server.url.removesuffix(ROUTE) + api.path
        try:
            found.ready_seconds = server.wait_ready(  # GET /readyz
                urllib.request.Request(server.url.removesuffix(ROUTE) + contender.ready_path)
            )
            if api is CHAT_API:
                expected = asyncio.run(chat_answers(url, max_new_tokens))
            assert expected is not None
            problems = asyncio.run(_check(url, max_new_tokens, expected, api))
            if problems:
                raise WrongText(
                    f"{contender.label} streamed text that differs from "
                    f"{api.reference}:\n  " + "\n  ".join(problems)
                )
            if contender.generates and newcomer_rounds > 0:
                _say(f"  {key}: newcomers beside {running} long streams")
                found.newcomers = asyncio.run(
                    newcomers(url, api, running=running, rounds=newcomer_rounds)
                )
                n = found.newcomers
                _say(
                    f"    first chunk alone p50 {_ms(n.idle_p50)} ms, beside {running} long "
                    f"streams p50 {_ms(n.loaded_p50)} ms, one step {_ms(n.step_ms)} ms, "
                    f"{n.errors} errors"
                )
            for c in concurrency:
                _say(f"  {key}: concurrency {c}")
                window = asyncio.run(
                    drive(
                        url,
                        server.pid,
                        concurrency=c,
                        max_new_tokens=max_new_tokens,
                        warmup=warmup,
                        seconds=seconds,
                        api=api,
                    )
                )
                found.windows.append(window)
                _say(
                    f"    {window.chunks_per_s:.0f} chunks/s, {window.requests} requests, "
                    f"first chunk p50 {_ms(window.first_p50_ms)} ms, {window.errors} errors, "
                    f"client CPU {window.client_cpu_s:.1f} s"
                )
        except RuntimeError as exc:
            if isinstance(exc, WrongText):
                raise
            found.error = f"{type(exc).__name__}: {exc}"
            _say(f"  {key} failed: {found.error}")
    return found


def best_of(rounds: list[Measurement]) -> Measurement:
    """Per concurrency, the round with the most chunks/s (load from elsewhere only slows)."""
    first = rounds[0]
    merged = Measurement(key=first.key, label=first.label, ready_seconds=first.ready_seconds)
    for c in sorted({w.concurrency for m in rounds for w in m.windows}):
        merged.windows.append(
            max((w for m in rounds if (w := m.at(c)) is not None), key=lambda w: w.chunks_per_s)
        )
    errors = [m.error for m in rounds if m.error]
    merged.error = "; ".join(errors) if errors else None
    merged.newcomers = _together([m.newcomers for m in rounds])
    merged.in_process = _together([m.in_process for m in rounds])
    return merged


def _together(found: list[Newcomers | None]) -> Newcomers | None:
    """Every round's newcomers as one set of figures."""
    seen = [n for n in found if n is not None]
    if not seen:
        return None
    steps = [n.step_ms for n in seen if n.step_ms is not None]
    return Newcomers(
        running=seen[0].running,
        rounds=sum(n.rounds for n in seen),
        idle_ms=[ms for n in seen for ms in n.idle_ms],
        loaded_ms=[ms for n in seen for ms in n.loaded_ms],
        step_ms=statistics.median(steps) if steps else None,
        joined=sum(n.joined for n in seen),
        errors=sum(n.errors for n in seen),
    )


# -- the report --------------------------------------------------------------------------------


@dataclass
class Run:
    """Everything one benchmark run measured, and where."""

    command: str
    machine: dict[str, str]
    seconds: float
    warmup: float
    rounds: int
    max_new_tokens: int
    concurrency: list[int]
    best: list[Measurement]
    per_round: list[list[Measurement]]
    load_before: str = ""
    load_after: str = ""
    wall_seconds: float = 0.0


def report(run: Run) -> str:
    m = run.machine
    rows = [
        "| server | clients | requests | first chunk p50 (ms) | first chunk p95 (ms) "
        "| chunks/s, all streams | chunks/s per stream | errors | server CPU s / 1000 chunks |",
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for measurement in run.best:
        for w in measurement.windows:
            rows.append(
                f"| {measurement.label} | {w.concurrency} | {w.requests} "
                f"| {_ms(w.first_p50_ms)} | {_ms(w.first_p95_ms)} | {w.chunks_per_s:.0f} "
                f"| {_num(w.stream_rate, '.0f')} | {w.errors} "
                f"| {_num(w.server_cpu_s_per_1000_chunks, '.2f')} |"
            )
        if measurement.error:
            rows.append(f"| {measurement.label} | failed: {measurement.error} |||||||")
    rounds = f"best of {run.rounds} rounds" if run.rounds > 1 else "1 round"
    joining = _newcomer_rows(run)
    chat = (
        f' The chat server answers `POST {CHAT}` with `"stream": true` and '
        f"`max_tokens={run.max_new_tokens}`, {len(CHAT_PROMPTS)} chat prompts in rotation, its "
        f"streamed text first checked against its own non-streamed answer; only its events "
        f"with text in `choices[0].delta.content` count as chunks (not the role chunk, the "
        f"finish chunk or `data: [DONE]`), so its first chunk is its first token."
    )
    return "\n".join(
        [
            "## Streaming generation",
            "",
            f"`{run.command}` on {m['cpu']}, {m['memory']}, {m['os']} ({m['arch']}), "
            f"Python {m['python']}; {m['packages']}. Load average {run.load_before} before, "
            f"{run.load_after} after; {rounds}.",
            "",
            *joining,
            *rows,
            "",
            f"Method: every server streams the tiny offline GPT-2 of `examples/tiny_lm.py` "
            f"(greedy, `max_new_tokens={run.max_new_tokens}`, {len(PROMPTS)} prompts in "
            f"rotation, some of which reach eos sooner; the /generate servers' text is first "
            f"checked against `generate()`)."
            + (chat if any(m.key.startswith("chat") for m in run.best) else "")
            + f" Closed-loop httpx clients, in the benchmark process on "
            f"the same cores, stream back to back for {run.warmup:g} s of warm-up, then "
            f"{run.seconds:g} s measured: chunks/s counts the SSE events that arrived in that "
            f"window; first chunk is from sending to the first event, and per stream is the "
            f"median of each request's (chunks - 1) / (last - first event), over the requests "
            f"sent in the window. Errors count every failed request of the run (non-200, "
            f"error event, no chunk). Each server runs alone; CPU is its whole process tree"
            + (f"; the best of {run.rounds} rounds per row." if run.rounds > 1 else ".")
            + (
                " LitServe's lines are NDJSON (one JSON object per piece) rather than SSE."
                if any(m.key == "litserve" for m in run.best)
                else ""
            ),
            "",
        ]
    )


def _newcomer_rows(run: Run) -> list[str]:
    """The newcomer table (and its method), when any server was measured for it."""
    found = [(m.label, m.newcomers) for m in run.best if m.newcomers is not None]
    found += [
        (f"{m.label}: in its process, no HTTP", m.in_process)
        for m in run.best
        if m.in_process is not None
    ]
    if not found:
        return []
    running = found[0][1].running
    rows = [
        f"| server | first chunk alone, p50 (ms) | beside {running} long streams, p50 (ms) "
        "| p95 (ms) | one model step then (ms) | goal: 2 x alone + 1 step (ms) "
        "| came before the long streams ended | errors |",
        "|---|--:|--:|--:|--:|--:|--:|--:|",
    ]
    for label, n in found:
        rows.append(
            f"| {label} | {_ms(n.idle_p50)} | {_ms(n.loaded_p50)} | {_ms(n.loaded_p95)} "
            f"| {_ms(n.step_ms)} | {_ms(n.goal_ms)} | {n.joined} of {len(n.loaded_ms)} "
            f"| {n.errors} |"
        )
    prompt, tokens = NEWCOMER
    return [
        *rows,
        "",
        f"A newcomer (`{prompt!r}`, `max_new_tokens={tokens}`) is sent alone, one after the "
        f"other; then, in each round, {running} long streams are sent "
        f"{1000 * LONG_APART_S:g} ms apart ({len(LONG_PROMPTS)} prompts the model continues "
        f"for all of {LONG_TOKENS} tokens) and, 50 to 100 ms after the last of them, one "
        "newcomer; "
        f"{found[0][1].rounds} newcomers of each kind per server. One model step is the median "
        "gap between two chunks of the long streams. The rows in its process make the same "
        "requests to the service's own backend in the benchmark's process, after its server "
        "stopped: the kit's batcher and the model, without HTTP and without the clients of "
        "the long streams sharing the two cores.",
        "",
    ]


def _ms(value: float | None) -> str:
    return _num(value, ".1f")


def _num(value: float | None, spec: str) -> str:
    return "n/a" if value is None else format(value, spec)


def _say(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _loadavg() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seconds, not minutes")
    parser.add_argument(
        "--contenders", default=",".join(CONTENDERS), help=f"subset of {','.join(CONTENDERS)}"
    )
    parser.add_argument("--concurrency", default="1,16,64", help="comma-separated client counts")
    parser.add_argument("--running", type=int, default=8, help="long streams beside each newcomer")
    parser.add_argument(
        "--newcomers",
        type=int,
        help="newcomer rounds per /generate server (0: none; 10, or 3 with --quick)",
    )
    parser.add_argument("--max-new-tokens", type=int, default=64, help="per request (1..200)")
    parser.add_argument("--seconds", type=float, help="measured seconds per concurrency")
    parser.add_argument("--warmup", type=float, help="warm-up seconds before each window")
    parser.add_argument("--rounds", type=int, help="measure everything this many times")
    parser.add_argument("--out", type=Path, help="also write the markdown section here")
    parser.add_argument("--json", type=Path, help="also write every figure here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    preset = QUICK if args.quick else FULL
    seconds = float(args.seconds or preset.seconds)
    warmup = float(args.warmup if args.warmup is not None else preset.warmup)
    rounds = int(args.rounds or preset.rounds)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    newcomer_rounds = args.newcomers if args.newcomers is not None else 3 if args.quick else 10
    keys = [k.strip() for k in args.contenders.split(",") if k.strip()]
    if unknown := [k for k in keys if k not in CONTENDERS]:
        parser.error(f"unknown contenders {unknown}; choose from {list(CONTENDERS)}")
    if missing := [k for k in keys if not CONTENDERS[k].available()]:
        _say(f"skipping {', '.join(missing)}: pip install -r benchmarks/requirements.txt")
        keys = [k for k in keys if k not in missing]
    if not 1 <= args.max_new_tokens <= 200:
        parser.error("--max-new-tokens is 1 to 200, as examples/generate.py accepts")

    from examples import tiny_lm

    command = "python -m benchmarks.streaming " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    load_before = _loadavg()
    per_round: list[list[Measurement]] = []
    with tempfile.TemporaryDirectory(prefix="mfk-stream-bench-") as scratch:
        _say("building the tiny model")
        model_dir = tiny_lm.build(Path(scratch) / "tiny-lm")
        os.environ["TINY_LM_DIR"] = str(model_dir)  # the servers inherit it
        generates = any(CONTENDERS[k].generates for k in keys)
        expected = reference_texts(model_dir, args.max_new_tokens) if generates else None
        for number in range(1, rounds + 1):
            _say(f"round {number} of {rounds}")
            per_round.append([])
            # Every other round runs the servers in reverse order, so that a machine that
            # grows busier or quieter during the run favours nobody.
            for key in keys if number % 2 else keys[::-1]:
                _say(f"{key}: starting")
                log_path = Path(scratch, f"{key}.log")
                try:
                    with log_path.open("w") as log:
                        found = measure_server(
                            key,
                            concurrency,
                            expected=expected,
                            max_new_tokens=args.max_new_tokens,
                            seconds=seconds,
                            warmup=warmup,
                            log=log,
                            running=args.running,
                            newcomer_rounds=newcomer_rounds,
                        )
                except WrongText as exc:
                    _say(f"aborted: {exc}")
                    return 2
                target = CONTENDERS[key].in_process
                if target is not None and newcomer_rounds > 0 and not found.error:
                    _say(f"  {key}: newcomers in this process, without HTTP")
                    found.in_process = asyncio.run(
                        newcomers_in_process(target, running=args.running, rounds=newcomer_rounds)
                    )
                    n = found.in_process
                    _say(
                        f"    first chunk alone p50 {_ms(n.idle_p50)} ms, beside "
                        f"{args.running} long streams p50 {_ms(n.loaded_p50)} ms, one step "
                        f"{_ms(n.step_ms)} ms"
                    )
                per_round[-1].append(found)
                if found.error:
                    _say(log_path.read_text()[-3000:])
    by_key = [[r for m in per_round for r in m if r.key == key] for key in keys]
    run = Run(
        command=command.strip(),
        machine={**machine(), "arch": platform.machine()},
        seconds=seconds,
        warmup=warmup,
        rounds=rounds,
        max_new_tokens=args.max_new_tokens,
        concurrency=concurrency,
        best=[best_of(found) for found in by_key],
        per_round=per_round,
        load_before=load_before,
        load_after=_loadavg(),
        wall_seconds=round(time.monotonic() - started, 1),
    )
    text = report(run)
    print(text)
    if args.out:
        args.out.write_text(text)
    if args.json:
        args.json.write_text(json.dumps(asdict(run), indent=1) + "\n")
    _say(f"done in {run.wall_seconds:.0f}s")
    return 1 if any(m.error for m in run.best) else 0


if __name__ == "__main__":
    sys.exit(main())
