"""examples/chat.py served with ``mfk serve`` and called with the official ``openai`` SDK (sync
and async, streamed and not), plus the protocol's edges on small in-process servers: stop
sequences across pieces, a failure mid-stream, a client that leaves, keys, a prefix."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi import FastAPI

from modal_fastapi_kit import END, InputError, gpu_service
from modal_fastapi_kit.openai import ChatRequest, ChatServer
from modal_fastapi_kit.openai._chat_completion import Completion
from modal_fastapi_kit.openai._chat_schemas import Piece

from .._servers import ThreadedServer, wait_ready
from ._sdk import sdk_client, serve_example

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

QUESTION = [{"role": "user", "content": "Where did the ship sail?"}]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from examples import tiny_lm

    return tiny_lm.build(tmp_path_factory.mktemp("tiny-lm") / "model")


@pytest.fixture(scope="module")
def greedy(model_dir: Path) -> str:
    """What transformers' own generate() answers QUESTION with, through the chat template."""
    import torch

    from examples import tiny_lm

    model, tokenizer = tiny_lm.load(model_dir)
    ids = tokenizer.apply_chat_template(
        QUESTION, add_generation_prompt=True, return_tensors="pt", return_dict=True
    )["input_ids"]
    with torch.inference_mode():
        out = model.generate(
            input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=64, do_sample=False
        )
    return str(tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True))


@pytest.fixture(scope="module")
def served(model_dir: Path) -> Iterator[str]:
    with serve_example("examples/chat.py", env={"TINY_LM_DIR": str(model_dir)}) as (base, _):
        yield base


client = sdk_client


def text_until_error(stream: Any) -> tuple[str, openai.APIError]:
    """The text a streamed completion sent before it failed, and the SDK's error."""
    got: list[str] = []
    with pytest.raises(openai.APIError) as raised:
        for chunk in stream:
            got.append(chunk.choices[0].delta.content or "")
    return "".join(got), raised.value


def test_a_completion_with_the_sdks_defaults_is_the_greedy_answer(served, greedy):
    answer = client(served).chat.completions.create(model="tiny-chat", messages=QUESTION)
    assert answer.object == "chat.completion"
    assert answer.model == "tiny-chat"
    assert answer.choices[0].message.role == "assistant"
    assert answer.choices[0].message.content == greedy
    assert answer.choices[0].finish_reason == "stop"
    assert answer.usage.completion_tokens > 5
    assert answer.usage.prompt_tokens == 14
    assert answer.usage.total_tokens == answer.usage.prompt_tokens + answer.usage.completion_tokens


def test_a_stream_sends_the_same_text_in_chunks_then_the_usage(served, greedy):
    stream = client(served).chat.completions.create(
        model="tiny-chat", messages=QUESTION, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert all(c.object == "chat.completion.chunk" for c in chunks)
    assert chunks[0].choices[0].delta.role == "assistant"
    texts = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(texts) > 5 and "".join(texts) == greedy
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == len(texts)


def test_the_async_client_streams_too(served, greedy):
    async def call() -> str:
        async with openai.AsyncOpenAI(base_url=f"{served}/v1", api_key="x") as async_client:
            stream = await async_client.chat.completions.create(
                model="tiny-chat", messages=QUESTION, stream=True
            )
            return "".join([c.choices[0].delta.content or "" async for c in stream])

    assert asyncio.run(call()) == greedy


def test_max_tokens_stop_and_sampling_parameters(served, greedy):
    api = client(served)
    short = api.chat.completions.create(model="tiny-chat", messages=QUESTION, max_tokens=3)
    assert short.choices[0].finish_reason == "length"
    assert short.usage.completion_tokens == 3
    assert greedy.startswith(short.choices[0].message.content)
    newer = api.chat.completions.create(
        model="tiny-chat", messages=QUESTION, max_completion_tokens=2
    )
    assert newer.usage.completion_tokens == 2
    stopped = api.chat.completions.create(model="tiny-chat", messages=QUESTION, stop=["west"])
    assert stopped.choices[0].finish_reason == "stop"
    assert stopped.choices[0].message.content == greedy[: greedy.index("west")]
    sampled = [
        api.chat.completions.create(
            model="tiny-chat", messages=QUESTION, temperature=1.5, top_p=0.9, seed=3
        )
        .choices[0]
        .message.content
        for _ in range(2)
    ]
    assert sampled[0] == sampled[1]  # the seed makes sampling repeatable


@pytest.mark.parametrize(
    ("kwargs", "error", "param", "says"),
    [
        ({"model": "gpt-4o"}, openai.NotFoundError, "model", "not served here"),
        ({"n": 2}, openai.BadRequestError, "n", "only n=1"),
        (
            {"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]},
            openai.BadRequestError,
            "tools",
            "tools is not supported by this server",
        ),
        ({"logprobs": True}, openai.BadRequestError, "logprobs", "not supported"),
        ({"presence_penalty": 0.5}, openai.BadRequestError, "presence_penalty", "only 0"),
        ({"temperature": 3}, openai.BadRequestError, "temperature", "less than or equal to 2"),
        ({"stop": ["a", "b", "c", "d", "e"]}, openai.BadRequestError, "stop", "at most 4"),
        ({"max_tokens": 250}, openai.BadRequestError, None, "context of 256 tokens"),
        (
            {"messages": [{"role": "tool", "content": "x", "tool_call_id": "1"}]},
            openai.BadRequestError,
            "messages.0.role",
            "Input should be",
        ),
    ],
)
def test_what_is_not_served_is_refused_with_the_sdks_exceptions(served, kwargs, error, param, says):
    request = {"model": "tiny-chat", "messages": QUESTION, **kwargs}
    with pytest.raises(error) as raised:
        client(served, max_retries=0).chat.completions.create(**request)
    assert raised.value.body["param"] == param
    assert says in raised.value.body["message"]


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
def test_curl_sees_the_sse_framing(served, greedy):
    body = json.dumps({"model": "tiny-chat", "stream": True, "messages": QUESTION})
    done = subprocess.run(
        ["curl", "-sN", f"{served}/v1/chat/completions", "-H",
         "content-type: application/json", "-d", body],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    events = done.stdout.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    chunks = [json.loads(e.removeprefix("data: ")) for e in events[:-2]]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == greedy
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


# -- the protocol's edges, on small servers in this process ------------------------------------

CLOSED: list[str] = []


@gpu_service(name="echo-chat", chunk_timeout=2)
class EchoChat(ChatServer):
    """Echoes the last message word by word; 'boom' fails after two words; 'forever' never
    ends."""

    model_id = "echo"

    def generate(self, request: ChatRequest) -> Iterator[str]:
        words = request.messages[-1].content.split()
        try:
            if words == ["forever"]:
                while True:
                    time.sleep(0.01)
                    yield "again "
            for i, word in enumerate(words):
                if word == "boom" and i == 2:
                    raise RuntimeError("secret internals")
                yield word + " "
        except GeneratorExit:
            CLOSED.append(words[0])
            raise


@pytest.fixture(scope="module")
def echo() -> Iterator[str]:
    with ThreadedServer(EchoChat.asgi_app()) as server:
        wait_ready(server.url)
        yield server.url


def say(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_a_stop_sequence_split_across_pieces_is_cut_out(echo):
    answer = client(echo).chat.completions.create(
        model="echo", messages=say("one two three four"), stop=["o th"]
    )
    assert answer.choices[0].message.content == "one tw"
    assert answer.choices[0].finish_reason == "stop"


def test_a_failure_mid_stream_raises_in_the_sdk(echo):
    stream = client(echo).chat.completions.create(
        model="echo", messages=say("one two boom four"), stream=True
    )
    got, error = text_until_error(stream)
    assert got == "one two "
    assert error.body["type"] == "server_error"
    assert "secret" not in error.message


def test_a_client_that_leaves_stops_the_generator(echo):
    CLOSED.clear()
    stream = client(echo).chat.completions.create(
        model="echo", messages=say("forever"), stream=True
    )
    for i, _ in enumerate(stream):
        if i == 3:
            break
    stream.close()
    for _ in range(300):
        if CLOSED:
            break
        time.sleep(0.01)
    assert CLOSED == ["forever"]


def test_keys_as_the_sdk_sends_them_and_a_prefixed_mount(monkeypatch):
    monkeypatch.setenv("MFK_API_KEYS", "chat-key-0123456789abcdef")

    @gpu_service(name="keyed-echo", auth="api-key")
    class KeyedEcho(EchoChat):
        model_id = "echo"

    app = FastAPI()
    app.include_router(KeyedEcho.router(), prefix="/llm")
    with ThreadedServer(app) as server:
        wait_ready(server.url, "/llm/readyz")
        good = client(server.url + "/llm", api_key="chat-key-0123456789abcdef")
        answer = good.chat.completions.create(model="echo", messages=say("hello there"))
        assert answer.choices[0].message.content == "hello there "
        assert [m.id for m in good.models.list()] == ["echo"]
        bad = client(server.url + "/llm", api_key="wrong", max_retries=0)
        with pytest.raises(openai.AuthenticationError) as raised:
            bad.chat.completions.create(model="echo", messages=say("hi"))
        assert raised.value.body["code"] == "invalid_api_key"
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()


def test_completion_holds_back_only_what_may_start_a_stop_sequence():
    answer = Completion(stop=["STOP"], max_tokens=100)
    sent = [answer.feed(Piece(text=t)) for t in ("ab", "cS", "TO", "x")]
    assert sent == ["ab", "c", "", "STOx"]  # "S", "STO" may start "STOP"; "STOx" does not
    assert answer.end() == "" and answer.finish == "stop"
    answer = Completion(stop=["STOP"], max_tokens=100)
    sent = [answer.feed(Piece(text=t)) for t in ("abS", "TOP and", "more")]
    assert sent == ["ab", "", ""] and answer.finish == "stop"
    assert answer.tokens == 2  # the piece after the stop was not taken
    answer = Completion(stop=[], max_tokens=2)
    assert [answer.feed(Piece(text=t)) for t in ("a", "b", "c")] == ["a", "b", ""]
    assert answer.finish == "length"


def test_async_generate_runs_on_the_loop():
    seen: list[str] = []

    @gpu_service(name="async-echo")
    class AsyncEcho(ChatServer):
        model_id = "async-echo"

        async def generate(self, request: ChatRequest):  # type: ignore[override]
            seen.append(threading.current_thread().name)
            for word in request.messages[-1].content.split():
                await asyncio.sleep(0)
                yield word

    with ThreadedServer(AsyncEcho.asgi_app()) as server:
        wait_ready(server.url)
        answer = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": "async-echo", "messages": say("a b c")},
        ).json()
    assert answer["choices"][0]["message"]["content"] == "abc"
    assert not seen[0].startswith("mfk-inference")


# -- the batched form: join / step / leave ---------------------------------------------------


def test_concurrent_completions_share_model_steps_and_each_is_the_greedy_answer(served, greedy):
    async def ask_all() -> list[str]:
        async with openai.AsyncOpenAI(base_url=f"{served}/v1", api_key="x") as async_client:

            async def ask(i: int) -> str:
                await asyncio.sleep(0.01 * i)  # staggered: later ones join a running batch
                if i % 2:
                    stream = await async_client.chat.completions.create(
                        model="tiny-chat", messages=QUESTION, stream=True
                    )
                    return "".join([c.choices[0].delta.content or "" async for c in stream])
                answer = await async_client.chat.completions.create(
                    model="tiny-chat", messages=QUESTION
                )
                return str(answer.choices[0].message.content)

            return await asyncio.gather(*(ask(i) for i in range(8)))

    before = shared_steps(served)
    assert asyncio.run(ask_all()) == [greedy] * 8
    assert shared_steps(served) > before  # steps that decoded several chats at once


def shared_steps(base: str) -> float:
    """How many model steps of tiny-chat so far decoded more than one chat."""
    from prometheus_client.parser import text_string_to_metric_families

    text = httpx.get(f"{base}/metrics", timeout=10).text
    values = {
        (s.name, s.labels.get("le")): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.labels.get("service") == "tiny-chat"
    }
    return values[("mfk_batch_size_count", None)] - values[("mfk_batch_size_bucket", "1.0")]


STEPPED: list[list[int]] = []  # the keys of each step of BatchedEcho
LEFT: list[int] = []


@gpu_service(name="batched-echo", max_batch_size=8, chunk_timeout=2)
class BatchedEcho(ChatServer):
    """Echoes the last message word by word, every chat in one step; 'boom' as the third word
    fails that chat; 'forever' never ends; an empty message ends at once; a message of more
    than ten words is refused when its prompt is counted."""

    model_id = "echo"

    def load(self) -> None:
        self.words: dict[int, list[str]] = {}
        self.sent: dict[int, int] = {}

    def count_prompt_tokens(self, request: ChatRequest) -> int:
        words = len(request.messages[-1].content.split())
        if words > 10:
            raise InputError(f"the message is {words} words; at most 10", status_code=400)
        return words

    def join(self, requests: dict[int, ChatRequest]) -> None:
        for key, request in requests.items():
            self.words[key] = request.messages[-1].content.split()
            self.sent[key] = 0

    def step(self) -> dict[int, object]:
        STEPPED.append(sorted(self.words))
        answers: dict[int, object] = {}
        for key, words in self.words.items():
            sent, self.sent[key] = self.sent[key], self.sent[key] + 1
            if words == ["forever"]:
                answers[key] = "again "
            elif sent == len(words):  # called again after END: an IndexError below
                answers[key] = END
            elif words[0] == "boom" and sent == 2:
                answers[key] = RuntimeError("secret internals")
            else:
                answers[key] = words[sent] + " "
        return answers

    def leave(self, keys: list[int]) -> None:
        LEFT.extend(keys)
        for key in keys:
            del self.words[key], self.sent[key]  # only keys join got: a KeyError fails the test


@pytest.fixture(scope="module")
def batched() -> Iterator[str]:
    with ThreadedServer(BatchedEcho.asgi_app()) as server:
        wait_ready(server.url)
        yield server.url


def test_the_batched_form_answers_each_chat_its_own_text_and_usage(batched):
    STEPPED.clear()
    texts = ["one two three", "a b c d e f g h", "", "x"]

    async def ask_all() -> list[openai.types.chat.ChatCompletion]:
        async with openai.AsyncOpenAI(base_url=f"{batched}/v1", api_key="x") as async_client:
            return await asyncio.gather(
                *(
                    async_client.chat.completions.create(model="echo", messages=say(t))
                    for t in texts
                )
            )

    for _ in range(5):  # the four arrive within a step of each other, unless the box is busy
        answers = asyncio.run(ask_all())
        for text, answer in zip(texts, answers, strict=True):
            words = text.split()
            assert answer.choices[0].message.content == "".join(w + " " for w in words)
            assert answer.choices[0].finish_reason == "stop"
            usage = answer.usage
            assert (usage.prompt_tokens, usage.completion_tokens) == (len(words), len(words))
        if max(len(keys) for keys in STEPPED) > 1:
            break
    assert max(len(keys) for keys in STEPPED) > 1  # chats decoded in the same steps


@gpu_service(name="ends-at-join", max_batch_size=4)
class EndsAtJoin(ChatServer):
    """A chat with an empty message ends in join itself; step, like a model's forward pass,
    cannot run on an empty batch."""

    model_id = "ends-at-join"

    def load(self) -> None:
        self.held: set[int] = set()

    def count_prompt_tokens(self, request: ChatRequest) -> int:
        return len(request.messages[-1].content.split())

    def join(self, requests: dict[int, ChatRequest]) -> dict[int, object]:
        self.held.update(requests)
        return {key: END for key, r in requests.items() if not r.messages[-1].content}

    def step(self) -> dict[int, object]:
        if not self.held:
            raise RuntimeError("a forward pass over an empty batch")
        return {key: END for key in self.held}

    def leave(self, keys: list[int]) -> None:
        self.held.difference_update(keys)


def test_a_chat_that_ends_in_join_takes_no_step_of_an_empty_batch():
    with ThreadedServer(EndsAtJoin.asgi_app()) as server:
        wait_ready(server.url)
        answer = client(server.url).chat.completions.create(model="ends-at-join", messages=say(""))
    assert answer.choices[0].message.content == ""
    assert answer.choices[0].finish_reason == "stop"


def test_the_batched_form_streams_usage_even_for_an_empty_answer(batched):
    stream = client(batched).chat.completions.create(
        model="echo", messages=say(""), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert [c.choices[0].delta.content for c in chunks if c.choices] == ["", None]
    assert chunks[-1].usage.prompt_tokens == 0 and chunks[-1].usage.completion_tokens == 0
    stream = client(batched).chat.completions.create(
        model="echo", messages=say("a b"), stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    assert (chunks[-1].usage.prompt_tokens, chunks[-1].usage.completion_tokens) == (2, 2)


def test_the_batched_form_refuses_a_prompt_alone_fails_a_chat_alone_and_frees_a_leaver(batched):
    LEFT.clear()
    with pytest.raises(openai.BadRequestError, match="at most 10"):
        client(batched, max_retries=0).chat.completions.create(
            model="echo", messages=say("w " * 11)
        )
    stream = client(batched).chat.completions.create(
        model="echo", messages=say("boom two three"), stream=True
    )
    got, error = text_until_error(stream)
    assert got == "boom two "
    assert "secret" not in error.message
    forever = client(batched).chat.completions.create(
        model="echo", messages=say("forever"), stream=True
    )
    for i, _ in enumerate(forever):
        if i == 3:
            break
    forever.close()
    for _ in range(300):
        if len(LEFT) == 2:
            break
        time.sleep(0.01)
    assert len(LEFT) == 2  # the failed chat and the one whose client left, each once
    answer = client(batched).chat.completions.create(model="echo", messages=say("still here"))
    assert answer.choices[0].message.content == "still here "


def test_the_batched_form_may_be_async():
    @gpu_service(name="async-batched-echo", max_batch_size=4)
    class AsyncBatchedEcho(ChatServer):
        model_id = "async-echo"

        async def load(self) -> None:
            self.words: dict[int, list[str]] = {}

        async def count_prompt_tokens(self, request: ChatRequest) -> int:  # type: ignore[override]
            return 7

        async def join(self, requests: dict[int, ChatRequest]) -> None:
            for key, request in requests.items():
                self.words[key] = request.messages[-1].content.split()

        async def step(self) -> dict[int, object]:
            await asyncio.sleep(0)
            return {key: words.pop(0) if words else END for key, words in self.words.items()}

        async def leave(self, keys: list[int]) -> None:
            for key in keys:
                del self.words[key]

    with ThreadedServer(AsyncBatchedEcho.asgi_app()) as server:
        wait_ready(server.url)
        answer = client(server.url).chat.completions.create(
            model="async-echo", messages=say("a b c")
        )
    assert answer.choices[0].message.content == "abc"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (7, 3)
