"""A chat model behind OpenAI's chat completions API, streamed or not.

    mfk serve examples/chat.py --port 8000
    curl -N localhost:8000/v1/chat/completions -H 'content-type: application/json' \\
         -d '{"model": "tiny-chat", "stream": true,
              "messages": [{"role": "user", "content": "Where did the ship sail?"}]}'

    from openai import OpenAI
    client = OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="unused")
    client.chat.completions.create(model="tiny-chat", messages=[{"role": "user", "content": "Hi"}])

The model is the tiny GPT-2 of ``examples/tiny_lm.py``, built offline at first load, with a
chat template. Decoding is greedy unless the request sets ``temperature`` > 0 (then sampled,
``top_p`` and ``seed`` honoured), so answers are deterministic by default. ``docs/openai.md``
shows the same class serving a real instruct model from a Hugging Face cache Volume on Modal.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from modal_fastapi_kit import InputError, gpu_service
from modal_fastapi_kit.openai import ChatRequest, ChatServer


@gpu_service(
    name="tiny-chat",
    gpu="T4",
    packages=["torch==2.13.0", "transformers>=4.40", "tokenizers>=0.19"],
    local_sources=["examples"],
    max_concurrent_inputs=32,
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

    def prompt_ids(self, request: ChatRequest) -> Any:
        messages = [{"role": m.role, "content": m.content} for m in request.messages]
        ids = self.tokenizer.apply_chat_template(
            messages, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )["input_ids"]
        if ids.shape[1] + request.max_tokens > self.context:
            raise InputError(
                f"the conversation is {ids.shape[1]} tokens and max_tokens is "
                f"{request.max_tokens}; together they must fit the model's context of "
                f"{self.context} tokens",
                status_code=400,
            )
        return ids

    def count_prompt_tokens(self, request: ChatRequest) -> int:
        return int(self.prompt_ids(request).shape[1])

    def generate(self, request: ChatRequest) -> Iterator[str]:
        ids = self.tiny_lm.sample_ids(
            self.model,
            self.prompt_ids(request),
            request.max_tokens,
            temperature=request.temperature,
            top_p=request.top_p,
            seed=request.seed,
        )
        return self.tiny_lm.decode_pieces(self.tokenizer, ids)


# `modal deploy examples/chat.py` (or `mfk deploy examples/chat.py`) publishes this.
app = TinyChat.modal_app()
