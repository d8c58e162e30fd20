"""Streaming text generation: a small causal LM, greedy decoding, one batch step per token.

    mfk serve examples/generate.py                   # local, http://127.0.0.1:8000/docs
    curl -N -X POST localhost:8000/generate -H 'content-type: application/json' \\
         -d '{"prompt": "The lighthouse", "max_new_tokens": 24}'

Each request streams its text pieces as Server-Sent Events (``data: {"index": 0, "text":
" stood"}``), or as NDJSON with ``Accept: application/x-ndjson``. Concurrent requests share
model steps: ``predict_batch`` is a generator that runs one forward pass for the whole batch
per step and yields one piece (or nothing) per request; a request that reached its end drops
out with ``END``, and a client that leaves stops receiving.

The model is built offline at first load (``examples/tiny_lm.py``: a 149k-parameter GPT-2
trained for a few seconds on a short corpus), so nothing is downloaded; its output is
deterministic and matches ``model.generate(do_sample=False)``.
"""

from __future__ import annotations

from collections.abc import Iterator
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
    max_batch_size=16,
    wait_ms=2,
    max_concurrent_inputs=64,
    max_containers=4,  # at most 4 GPUs at once, whatever the load
)
class Generator(ModelServer[GenerateIn, Piece]):
    """Greedy continuation of a prompt, streamed piece by piece."""

    def load(self) -> None:
        import torch

        from examples import tiny_lm

        self.torch = torch
        self.tiny_lm = tiny_lm
        self.model, self.tokenizer = tiny_lm.load(tiny_lm.model_dir())
        self.tokenizer.padding_side = "left"  # prompts end where generation starts
        self.cache_arg = tiny_lm.cache_argument(self.model)
        self.eos = int(self.model.generation_config.eos_token_id)
        self.context = int(self.model.config.max_position_embeddings)

    def warmup(self) -> None:
        for _ in self.predict_batch([GenerateIn(prompt="warm up", max_new_tokens=2)]):
            pass

    def predict_batch(self, items: list[GenerateIn]) -> Iterator[list[Any]]:
        torch = self.torch
        encode = self.tokenizer
        lengths = [len(encode(i.prompt, add_special_tokens=False)["input_ids"]) for i in items]
        refused = [
            InputError(
                f"the prompt is {n} tokens and max_new_tokens is {item.max_new_tokens}; "
                f"together they must fit the model's context of {self.context} tokens"
            )
            if n + item.max_new_tokens > self.context
            else None
            for item, n in zip(items, lengths, strict=True)
        ]
        running = [i for i, error in enumerate(refused) if error is None]
        if len(running) < len(items):
            yield [refused[i] or None for i in range(len(items))]
        if not running:
            return
        batch = encode(
            [items[i].prompt for i in running],
            return_tensors="pt",
            padding=True,
            add_special_tokens=False,
        )
        input_ids, mask = batch["input_ids"], batch["attention_mask"]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        decoders = [self.tiny_lm.PieceDecoder(self.tokenizer) for _ in running]
        tokens = [0] * len(running)  # generated so far
        pieces = [0] * len(running)  # sent so far
        stopped = [False] * len(running)  # no more tokens to compute
        ended = [False] * len(running)  # END sent
        past: Any = None

        def send(slot: int, text: str) -> Piece:
            pieces[slot] += 1
            return Piece(index=pieces[slot] - 1, text=text)

        while not all(ended):
            if not all(stopped):
                with torch.inference_mode():
                    out = self.model(
                        input_ids=input_ids,
                        attention_mask=mask,
                        position_ids=positions,
                        use_cache=True,
                        **{self.cache_arg: past},
                    )
                past = out[self.cache_arg]
                next_ids = out.logits[:, -1].argmax(-1)
            row: list[Any] = [None] * len(items)
            for slot, i in enumerate(running):
                if ended[slot]:
                    continue
                if not stopped[slot] and int(next_ids[slot]) != self.eos:
                    if text := decoders[slot].push(int(next_ids[slot])):
                        row[i] = send(slot, text)
                    tokens[slot] += 1
                    stopped[slot] = tokens[slot] >= items[i].max_new_tokens
                    continue
                stopped[slot] = True  # eos, or the budget was spent last step
                tail = decoders[slot].finish()
                row[i] = send(slot, tail) if tail else END
                ended[slot] = not tail
            yield row
            input_ids = next_ids[:, None]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=-1)
            positions = positions[:, -1:] + 1


# `modal deploy examples/generate.py` (or `mfk deploy examples/generate.py`) publishes this.
app = Generator.modal_app()
