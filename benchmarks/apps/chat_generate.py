"""The chat example in the one-generator-per-request form: chats take turns, never share a step.

    mfk serve benchmarks/apps/chat_generate.py:TinyChatGenerate --port 8000

The same model, prompts and answers as ``examples/chat.py``, written with ``generate`` (a
generator per request, stepped in turns on the inference thread) instead of ``join`` /
``step`` / ``leave``. ``benchmarks/streaming.py`` compares the two.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from modal_fastapi_kit import InputError, gpu_service
from modal_fastapi_kit.openai import ChatRequest, ChatServer


@gpu_service(name="tiny-chat-generate", max_concurrent_inputs=64)
class TinyChatGenerate(ChatServer):
    """``examples/chat.py``'s model, one generator per chat."""

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
