"""The streaming example in the generator form: a batch of streams formed once, run to its end.

    mfk serve benchmarks/apps/generate_static.py:GeneratorStatic --port 8000

The same model, route, requests and text as ``examples/generate.py``, written as the kit's
simpler streaming form: ``predict_batch`` is a generator that runs one forward pass per step
for the requests it was given and yields one piece (or ``None``, or ``END``) per request. Its
batch is formed when it starts and holds the model until its longest stream ends: the slots of
streams that finished stay empty, and a request that arrives meanwhile waits for the next
batch. ``benchmarks/streaming.py`` compares it with the joining form of ``examples/generate.py``.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from examples.generate import GenerateIn, Piece
from modal_fastapi_kit import END, InputError, ModelServer, gpu_service


@gpu_service(
    name="generate-static",
    route="/generate",
    max_batch_size=16,
    wait_ms=2,
    max_concurrent_inputs=64,
)
class GeneratorStatic(ModelServer[GenerateIn, Piece]):
    """``examples/generate.py``'s model as a batched generator: one batch runs to its end."""

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
