"""A chat model behind OpenAI's chat completions API, streamed or not, decoded in batches.

    mfk serve examples/chat.py --port 8000
    curl -N localhost:8000/v1/chat/completions -H 'content-type: application/json' \\
         -d '{"model": "tiny-chat", "stream": true,
              "messages": [{"role": "user", "content": "Where did the ship sail?"}]}'

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "Hi"}])

The model is the tiny GPT-2 of ``examples/tiny_lm.py``, built offline at first load, with a
chat template. Concurrent chats are decoded together on one KV cache (``tiny_lm.StepBatch``):
``join`` runs the newcomers' prompts (their first token is their first piece), ``step`` one
token for every chat, ``leave`` drops the chats that ended or whose client left, and a chat
that arrives while others are decoding joins them at the next step. Decoding is greedy unless
the request sets ``temperature`` > 0 (then sampled, ``top_p`` and ``seed`` honoured), so
answers are deterministic by default and the same whatever was decoded beside them.
``docs/openai.md`` shows a ``ChatServer`` serving a real instruct model from a Hugging Face
cache Volume on Modal.
"""

from __future__ import annotations

from typing import Any

from modal_fastapi_kit import END, InputError, gpu_service
from modal_fastapi_kit.openai import ChatRequest, ChatServer


@gpu_service(
    name="tiny-chat",
    gpu="T4",
    packages=["torch==2.13.0", "transformers>=4.40", "tokenizers>=0.19"],
    local_sources=["examples"],
    max_batch_size=64,  # chats decoded together; more wait for a slot, then join
    max_concurrent_inputs=64,
    max_containers=4,  # at most 4 GPUs at once, whatever the load
)
class TinyChat(ChatServer):
    """A 149k-parameter chat model, for trying the OpenAI clients against."""

    model_id = "tiny-chat"
    default_max_tokens = 64

    def load(self) -> None:
        from examples import tiny_lm

        self.tiny_lm = tiny_lm
        self.model, self.tokenizer = tiny_lm.load(tiny_lm.model_dir())
        self.context = int(self.model.config.max_position_embeddings)
        self.batch = tiny_lm.StepBatch(self.model, int(self.tokenizer.pad_token_id))
        self.chats: dict[int, Any] = {}  # key -> tiny_lm.Sequence

    def prompt_ids(self, request: ChatRequest) -> list[int]:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        ids: list[int] = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_dict=True
        )["input_ids"]
        if len(ids) + request.max_tokens > self.context:
            raise InputError(
                f"the conversation is {len(ids)} tokens and max_tokens is "
                f"{request.max_tokens}; together they must fit the model's context of "
                f"{self.context} tokens",
                status_code=400,
            )
        return ids

    def count_prompt_tokens(self, request: ChatRequest) -> int:
        return len(self.prompt_ids(request))  # a prompt too long is refused here, alone

    def join(self, requests: dict[int, ChatRequest]) -> dict[int, Any]:
        prompts = {key: self.prompt_ids(request) for key, request in requests.items()}
        answers: dict[int, Any] = {}
        for key, logits in self.batch.add(prompts).items():
            request = requests[key]
            chat = self.chats[key] = self.tiny_lm.Sequence(
                self.model,
                self.tokenizer,
                request.max_tokens,
                temperature=request.temperature,
                top_p=request.top_p,
                seed=request.seed,
            )
            answers[key] = _text(chat.next(logits))
        return answers

    def step(self) -> dict[int, Any]:
        feed = {key: chat.token for key, chat in self.chats.items() if not chat.done}
        logits = self.batch.step(feed) if feed else {}
        return {key: _text(chat.next(logits.get(key))) for key, chat in self.chats.items()}

    def leave(self, keys: list[int]) -> None:
        for key in keys:
            self.chats.pop(key, None)
        self.batch.drop(keys)


def _text(piece: str | None) -> str | object:
    """The chat's next piece of text ("" for none this step), or END once it has ended."""
    return END if piece is None else piece


# `modal deploy examples/chat.py` (or `mfk deploy examples/chat.py`) publishes this.
app = TinyChat.modal_app()
