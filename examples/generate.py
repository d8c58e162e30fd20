"""Streaming text generation: a small causal LM, greedy decoding, continuous batching.

    mfk serve examples/generate.py                   # local, http://127.0.0.1:8000/docs
    curl -N -X POST localhost:8000/generate -H 'content-type: application/json' \\
         -d '{"prompt": "The lighthouse", "max_new_tokens": 24}'

Each request streams its text pieces as Server-Sent Events (``data: {"index": 0, "text":
" stood"}``), or as NDJSON with ``Accept: application/x-ndjson``. Concurrent requests share
model steps, and a request that arrives while others are generating joins them at the next
step instead of waiting for them to finish: the kit runs the loop and calls ``join`` (prefill
the newcomers' prompts into the batch's KV cache; their first token is their first piece),
``step`` (one forward pass for every sequence, one piece or nothing per request; ``END`` when
a request reached eos or its ``max_new_tokens``) and ``leave`` (drop the rows of requests that
ended or whose client left).

The model is built offline at first load (``examples/tiny_lm.py``: a 149k-parameter GPT-2
trained for a few seconds on a short corpus), so nothing is downloaded; each request's text is
``model.generate(do_sample=False)``'s for its prompt, whatever joined or left beside it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from modal_fastapi_kit import END, InputError, ModelServer, gpu_service


class GenerateIn(BaseModel):
    prompt: str = Field(min_length=1, max_length=2_000, examples=["The lighthouse"])
    max_new_tokens: int = Field(default=32, ge=1, le=200)


class Piece(BaseModel):
    index: int = Field(description="position of this piece in the answer, from 0")
    text: str = Field(description="the next piece of generated text")


@gpu_service(
    name="generate-api",
    gpu="T4",
    packages=["torch==2.13.0", "transformers>=4.40", "tokenizers>=0.19"],
    local_sources=["examples"],
    route="/generate",
    max_batch_size=64,  # streams decoded together; more wait for a slot, then join
    max_concurrent_inputs=64,
    max_containers=4,  # at most 4 GPUs at once, whatever the load
)
class Generator(ModelServer[GenerateIn, Piece]):
    """Greedy continuation of a prompt, streamed piece by piece."""

    def load(self) -> None:
        from examples import tiny_lm

        self.tiny_lm = tiny_lm
        self.model, self.tokenizer = tiny_lm.load(tiny_lm.model_dir())
        self.context = int(self.model.config.max_position_embeddings)
        self.batch = tiny_lm.StepBatch(self.model, int(self.tokenizer.pad_token_id))
        self.sequences: dict[int, Any] = {}  # key -> tiny_lm.Sequence

    def warmup(self) -> None:
        self.join({-1: GenerateIn(prompt="warm up", max_new_tokens=2)})
        while self.step().get(-1) is not END:
            pass
        self.leave([-1])

    def join(self, items: dict[int, GenerateIn]) -> dict[int, Any]:
        answers: dict[int, Any] = {}
        prompts: dict[int, list[int]] = {}
        for key, item in items.items():
            ids = self.tokenizer(item.prompt, add_special_tokens=False)["input_ids"]
            if len(ids) + item.max_new_tokens > self.context:
                answers[key] = InputError(
                    f"the prompt is {len(ids)} tokens and max_new_tokens is "
                    f"{item.max_new_tokens}; together they must fit the model's context of "
                    f"{self.context} tokens"
                )
            else:
                prompts[key] = ids
        for key, logits in self.batch.add(prompts).items():
            sequence = self.tiny_lm.Sequence(self.model, self.tokenizer, items[key].max_new_tokens)
            self.sequences[key] = sequence
            answers[key] = self._piece(sequence, sequence.next(logits))
        return answers

    def step(self) -> dict[int, Any]:
        feed = {key: s.token for key, s in self.sequences.items() if not s.done}
        logits = self.batch.step(feed) if feed else {}
        return {
            key: self._piece(sequence, sequence.next(logits.get(key)))
            for key, sequence in self.sequences.items()
        }

    def leave(self, keys: list[int]) -> None:
        for key in keys:
            self.sequences.pop(key, None)
        self.batch.drop(keys)

    @staticmethod
    def _piece(sequence: Any, text: str | None) -> Piece | object | None:
        if text is None:
            return END  # eos, or max_new_tokens reached
        return Piece(index=sequence.pieces - 1, text=text) if text else None


# `modal deploy examples/generate.py` (or `mfk deploy examples/generate.py`) publishes this.
app = Generator.modal_app()
