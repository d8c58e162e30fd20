"""The streaming example's model on LitServe's continuous batching loop.

    python -m benchmarks.apps.litserve_generate --port 8000

``POST /generate`` with ``{"prompt", "max_new_tokens"}`` streams one JSON line
(``{"index", "text"}``) per text piece, from the same decoding as ``examples/generate.py``
(``tiny_lm.StepBatch``, greedy, at most 64 sequences at once): LitServe 0.2.19's
``ContinuousBatchingLoop`` adds requests (``add_request``, on its scheduling task) and calls
``step`` in a thread; each ``step`` runs one token for the running sequences, then the prefill
of the requests added since, whose first piece goes out at once. Needs
``pip install -r benchmarks/requirements.txt``.
"""

# No ``from __future__ import annotations`` here: LitServe reads the annotations of
# decode_request at run time and needs real classes, not strings.
import argparse
import threading
from typing import Any

import litserve as ls  # type: ignore[import-untyped]
from litserve.loops.continuous_batching_loop import (  # type: ignore[import-untyped]
    ContinuousBatchingLoop,
    Output,
)
from litserve.utils import LitAPIStatus  # type: ignore[import-untyped]

from benchmarks.apps._litserve import serve
from examples.generate import GenerateIn

MAX_BATCH_SIZE = 64


class TinyLMSteps(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        from examples import tiny_lm

        self.tiny_lm = tiny_lm
        self.model, self.tokenizer = tiny_lm.load(tiny_lm.model_dir())
        self.batch = tiny_lm.StepBatch(self.model, int(self.tokenizer.pad_token_id))
        self.sequences: dict[str, Any] = {}  # uid -> tiny_lm.Sequence, in the batch
        self.added: dict[str, GenerateIn] = {}  # uid -> request, for the next step's prefill
        self.lock = threading.Lock()  # add_request runs beside step, on another thread

    def decode_request(self, request: GenerateIn) -> GenerateIn:
        return request

    def add_request(self, uid: str, request: Any) -> None:
        with self.lock:
            self.added[uid] = GenerateIn.model_validate(request)

    def has_capacity(self) -> bool:
        with self.lock:
            return len(self.sequences) + len(self.added) < MAX_BATCH_SIZE

    def has_active_requests(self) -> bool:
        with self.lock:
            return bool(self.sequences or self.added)

    def step(self, prev_outputs: Any) -> list[Any]:
        outputs: list[Any] = []
        feed = {uid: s.token for uid, s in self.sequences.items() if not s.done}
        logits = self.batch.step(feed) if feed else {}
        for uid, sequence in list(self.sequences.items()):
            self._emit(outputs, uid, sequence.next(logits.get(uid)))
        with self.lock:
            added, self.added = self.added, {}
        prompts = {
            uid: self.tokenizer(item.prompt, add_special_tokens=False)["input_ids"]
            for uid, item in added.items()
        }
        for uid, first in self.batch.add(prompts).items():
            sequence = self.sequences[uid] = self.tiny_lm.Sequence(
                self.model, self.tokenizer, added[uid].max_new_tokens
            )
            self._emit(outputs, uid, sequence.next(first))
        return outputs

    def _emit(self, outputs: list[Any], uid: str, text: str | None) -> None:
        if text is None:  # eos or max_new_tokens: the end of this request's stream
            outputs.append(Output(uid, "", LitAPIStatus.FINISH_STREAMING))
            del self.sequences[uid]
            self.batch.drop([uid])
        elif text:
            piece = {"index": self.sequences[uid].pieces - 1, "text": text}
            outputs.append(Output(uid, piece, LitAPIStatus.OK))

    def encode_response(self, output: Any) -> Any:
        return output


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--port", type=int, default=8000)
    args = parser.parse_args()
    api = TinyLMSteps(
        api_path="/generate", stream=True, loop=ContinuousBatchingLoop(), max_batch_size=1
    )
    serve(api, args.port)


if __name__ == "__main__":
    main()
