"""A tiny causal language model built offline, for examples and tests that stream text.

    from examples.tiny_lm import load, greedy_tokens
    model, tokenizer = load("/tmp/tiny-lm")     # the first call builds it: ~5 s, plus imports
    greedy_tokens(model, tokenizer, "The lighthouse", max_new_tokens=20)
    # [' stood', ' on', ' the', ' rock', 's', ' at', ' the', ' end', ...]

``build()`` trains a byte-level BPE tokenizer (``tokenizers``, 512 tokens) and a 2-layer GPT-2
(149k parameters) for 300 steps on a short corpus embedded below, with fixed seeds and one
thread, and saves both with ``save_pretrained``. Nothing is downloaded. The files are written
to a temporary sibling and renamed into place, so concurrent builders are safe. The tokenizer
has a chat template over ``<|system|>``, ``<|user|>``, ``<|assistant|>`` and ``<|end|>``
(the eos); ``greedy_tokens`` streams with a KV cache and ``reference_text`` uses ``generate``.
``StepBatch`` decodes many sequences on one KV cache, one token each per step, sequences
joining and leaving between steps (continuous batching), and ``Sequence`` is one of them: its
token choice, budget and text pieces. Both work for a causal LM of transformers whose cache is
the plain ``DynamicCache``.

torch, transformers and tokenizers are imported inside the functions: importing this module
stays cheap.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import shutil
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

BOS, EOS, PAD = "<|begin|>", "<|end|>", "<|pad|>"
SYSTEM, USER, ASSISTANT = "<|system|>", "<|user|>", "<|assistant|>"
SPECIAL_TOKENS = [PAD, BOS, EOS, SYSTEM, USER, ASSISTANT]

CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] not in ['system', 'user', 'assistant'] %}"
    "{{ raise_exception('roles are system, user and assistant') }}"
    "{% endif %}"
    "{{ '<|' + message['role'] + '|>\\n' + message['content'] + '<|end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\\n' }}{% endif %}"
)

VOCAB_SIZE = 512
N_POSITIONS = 256
SEED = 1234
TRAIN_STEPS = 300  # ~5 s on one CPU thread; enough to memorise most of the corpus
BATCH_SIZE = 8
BLOCK_SIZE = 64
LEARNING_RATE = 5e-3

CORPUS = (
    "The lighthouse stood on the rocks at the end of the harbour. Every evening the keeper "
    "climbed the narrow stairs, trimmed the wick and lit the lamp, and the beam swept slowly "
    "over the grey water so that the fishing boats could find their way home.",
    "The old mill by the river turned all day long. The miller was a patient man who rose "
    "before the sun, and the sound of the wheel and the water was the first thing the village "
    "heard each morning.",
    "In the spring the garden was full of small green shoots. The children planted beans and "
    "peas in straight rows, and they watered them every day until the first flowers opened "
    "in the warm light of May.",
    "The train left the station at nine o'clock. It ran past the fields and the farms, over "
    "the long bridge and through the hills, and it reached the city by the sea in the middle "
    "of the afternoon.",
    "A good loaf of bread needs only flour, water, salt and time. The baker mixed the dough "
    "at night, left it to rise in a cool room, and baked it early in the morning so that the "
    "shop smelled of warm bread when the door was opened.",
    "The library was quiet and cool. Tall shelves of old books ran from the floor to the "
    "ceiling, and the reader at the long table turned the pages slowly, one by one, while the "
    "rain fell softly on the windows.",
    "Snow fell on the mountain all through the night. In the morning the valley was white and "
    "still, the roofs of the houses were covered, and the only sound was the river running "
    "under the ice.",
    "The ship sailed west for many days. The sailors watched the stars at night and the sun "
    "by day, and at last they saw a line of green land on the far edge of the sea.",
)

CHATS = (
    (
        "Tell me about the lighthouse.",
        "The lighthouse stood on the rocks at the end of the harbour, "
        "and its beam guided the boats home.",
    ),
    (
        "What does the miller do?",
        "The miller rises before the sun and turns the wheel by the river all day long.",
    ),
    ("How do you make bread?", "A good loaf of bread needs only flour, water, salt and time."),
    (
        "Where did the train go?",
        "The train ran past the fields and over the bridge to the city by the sea.",
    ),
    (
        "What is in the garden?",
        "The garden is full of beans and peas and the first flowers of May.",
    ),
    ("Describe the library.", "The library was quiet and cool, with tall shelves of old books."),
    (
        "What happened on the mountain?",
        "Snow fell all through the night, and the valley was white and still.",
    ),
    (
        "Where did the ship sail?",
        "The ship sailed west for many days until the sailors saw green land.",
    ),
)
SYSTEM_PROMPT = "You are a helpful assistant who tells short stories."

_MARKER = "tiny_lm_build.json"
# Where the examples build the model at first load and find it afterwards ($TINY_LM_DIR).
DEFAULT_DIR = Path.home() / ".cache" / "modal-fastapi-kit" / "tiny-lm"
_MODEL_FILES = (
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)


def _spec() -> dict[str, Any]:
    """Everything that decides the build's output; its hash names the build."""
    return {
        "corpus": CORPUS,
        "chats": CHATS,
        "system": SYSTEM_PROMPT,
        "special": SPECIAL_TOKENS,
        "template": CHAT_TEMPLATE,
        "hyper": [VOCAB_SIZE, N_POSITIONS, SEED, TRAIN_STEPS, BATCH_SIZE, BLOCK_SIZE],
        "lr": LEARNING_RATE,
        "format": 1,
    }


def _build_id() -> str:
    return hashlib.sha256(json.dumps(_spec(), sort_keys=True).encode()).hexdigest()[:16]


def is_complete(directory: str | os.PathLike[str]) -> bool:
    """Whether ``directory`` holds a finished build of this exact corpus and configuration."""
    path = Path(directory)
    try:
        marker = json.loads((path / _MARKER).read_text())
    except (OSError, ValueError):
        return False
    return marker.get("build_id") == _build_id() and all(
        (path / name).is_file() for name in _MODEL_FILES
    )


def _chat_texts() -> list[list[dict[str, str]]]:
    """Each question and answer twice: with and without the system prompt."""
    chats = []
    for question, answer in CHATS:
        turns = [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
        chats.append(turns)
        chats.append([{"role": "system", "content": SYSTEM_PROMPT}, *turns])
    return chats


def _make_tokenizer() -> PreTrainedTokenizerBase:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    raw = Tokenizer(models.BPE())
    raw.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    raw.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE,
        min_frequency=2,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    questions = [question for question, _ in CHATS]
    answers = [answer for _, answer in CHATS]
    raw.train_from_iterator([*CORPUS, *questions, *answers, SYSTEM_PROMPT], trainer=trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=raw,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        additional_special_tokens=[SYSTEM, USER, ASSISTANT],  # 5.x: extra_special_tokens
        clean_up_tokenization_spaces=False,  # decoding must not rewrite earlier text
        model_max_length=N_POSITIONS,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def _training_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The corpus as one token stream: plain paragraphs end with eos, chats use the template."""
    ids: list[int] = []
    for paragraph in CORPUS:
        ids += tokenizer(paragraph + EOS, add_special_tokens=False)["input_ids"]
    for messages in _chat_texts():
        rendered = tokenizer.apply_chat_template(messages, tokenize=False)
        ids += tokenizer(rendered, add_special_tokens=False)["input_ids"]
    return ids


def _make_model(tokenizer: PreTrainedTokenizerBase) -> PreTrainedModel:
    import torch
    from torch.nn.functional import cross_entropy
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=len(tokenizer),
        n_positions=N_POSITIONS,
        n_embd=64,
        n_layer=2,
        n_head=4,
        activation_function="gelu",
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(SEED)
    model = GPT2LMHeadModel(config)

    data = torch.tensor(_training_ids(tokenizer), dtype=torch.long)
    generator = torch.Generator().manual_seed(SEED)
    optimizer = torch.optim.AdamW(model.parameters(), lr=LEARNING_RATE, weight_decay=0.0)
    model.train()
    for _ in range(TRAIN_STEPS):
        starts = torch.randint(0, len(data) - BLOCK_SIZE, (BATCH_SIZE,), generator=generator)
        batch = torch.stack([data[start : start + BLOCK_SIZE] for start in starts.tolist()])
        logits = model(input_ids=batch).logits[:, :-1]
        loss = cross_entropy(logits.reshape(-1, logits.shape[-1]), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    model.eval()

    model.generation_config.bos_token_id = tokenizer.bos_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.do_sample = False
    return model


def build(directory: str | os.PathLike[str]) -> Path:
    """Build the model and tokenizer into ``directory`` unless a finished build is there.

    ``directory`` may be missing or an empty folder. The files are written to a temporary
    sibling and renamed into place; if another process finishes first, its build is kept.
    Deterministic on one machine: torch is seeded and trains on one thread.
    """
    target = Path(directory).absolute()
    if is_complete(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)

    import torch

    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.building-", dir=target.parent))
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)  # the same float reductions every time; the model is tiny
        tokenizer = _make_tokenizer()
        model = _make_model(tokenizer)
        tokenizer.save_pretrained(staging)
        model.save_pretrained(staging, safe_serialization=True)
        (staging / _MARKER).write_text(json.dumps({"build_id": _build_id()}) + "\n")
        staging.chmod(0o755)  # mkdtemp makes it 0700
        try:
            os.replace(staging, target)  # atomic; replaces only a missing or empty folder
        except OSError:
            if not is_complete(target):
                raise FileExistsError(
                    f"{target} exists and is not a tiny_lm build; remove it or pick another path"
                ) from None
    finally:
        torch.set_num_threads(threads)
        shutil.rmtree(staging, ignore_errors=True)
    return target


def model_dir() -> Path:
    """``$TINY_LM_DIR``, else ``DEFAULT_DIR``."""
    return Path(os.environ.get("TINY_LM_DIR") or DEFAULT_DIR)


def load(directory: str | os.PathLike[str]) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Build if needed, then load the model (eval mode, CPU) and its tokenizer."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = build(directory)
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path).to("cpu").eval()
    return model, tokenizer


def _prompt_ids(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int
) -> Any:
    ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"]
    limit = model.config.max_position_embeddings
    if ids.shape[1] == 0:
        raise ValueError("the prompt is empty")
    if ids.shape[1] + max_new_tokens > limit:
        raise ValueError(f"prompt ({ids.shape[1]} tokens) + max_new_tokens exceeds {limit}")
    return ids.to(model.device)


class PieceDecoder:
    """Token ids in, text pieces out, joining to ``tokenizer.decode(all_ids)``.

    The growing sequence is decoded whole and only the new suffix is returned; it is held back
    while it ends in an incomplete UTF-8 character (a byte-level token can split one).
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer
        self.ids: list[int] = []
        self.emitted = ""

    def push(self, token_id: int) -> str:
        """The text ``token_id`` completes ("" while a character is still incomplete)."""
        self.ids.append(token_id)
        text = str(self.tokenizer.decode(self.ids, skip_special_tokens=True))
        if text.endswith("\ufffd") or not text.startswith(self.emitted):
            return ""
        piece, self.emitted = text[len(self.emitted) :], text
        return piece

    def finish(self) -> str:
        """Whatever is still held back at the end of the sequence."""
        text = str(self.tokenizer.decode(self.ids, skip_special_tokens=True))
        if len(text) > len(self.emitted) and text.startswith(self.emitted):
            piece, self.emitted = text[len(self.emitted) :], text
            return piece
        return ""


def decode_pieces(tokenizer: PreTrainedTokenizerBase, token_ids: Iterable[int]) -> Iterator[str]:
    """The non-empty pieces of a ``PieceDecoder`` over ``token_ids``."""
    decoder = PieceDecoder(tokenizer)
    for token_id in token_ids:
        if piece := decoder.push(token_id):
            yield piece
    if piece := decoder.finish():
        yield piece


def cache_argument(model: PreTrainedModel) -> str:
    """The forward's KV-cache keyword: transformers 5.x renamed ``past_key_values`` to
    ``cache`` (the old name warns)."""
    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def sample_ids(
    model: PreTrainedModel,
    input_ids: Any,
    max_new_tokens: int,
    *,
    temperature: float | None = None,
    top_p: float | None = None,
    seed: int | None = None,
) -> Iterator[int]:
    """Token ids after ``input_ids`` (shape ``[1, n]``), one step at a time with a KV cache;
    greedy unless ``temperature`` > 0 (then sampled, nucleus ``top_p``, seeded by ``seed``).
    Stops before eos."""
    import torch

    cache_arg = cache_argument(model)
    eos = model.generation_config.eos_token_id
    stop = set(eos if isinstance(eos, list) else [eos])
    sampled = temperature is not None and temperature > 0
    generator = torch.Generator(device=input_ids.device)
    if seed is not None:
        generator.manual_seed(seed)
    past: Any = None
    for _ in range(max_new_tokens):
        with torch.inference_mode():  # not held across the yield: it is thread state
            out = model(input_ids=input_ids, use_cache=True, **{cache_arg: past})
            past = out[cache_arg]
            logits = out.logits[0, -1]
            if sampled:
                token = _sample(logits / float(temperature or 1.0), top_p, generator)
            else:
                token = int(logits.argmax())
        if token in stop:
            return
        yield token
        input_ids = torch.tensor([[token]], device=input_ids.device)


def _sample(logits: Any, top_p: float | None, generator: Any) -> int:
    import torch

    probs = torch.softmax(logits.float(), dim=-1)
    if top_p is not None and top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        outside = ordered.cumsum(-1) - ordered > top_p  # keep the smallest set over top_p
        ordered[outside] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, ordered)
    return int(torch.multinomial(probs / probs.sum(), 1, generator=generator))


class Sequence:
    """One sequence being continued: picks each next token (greedy, or sampled as
    ``sample_ids`` does), spends a budget of ``max_new_tokens``, stops before eos, and turns
    the tokens into text pieces (``PieceDecoder``)."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        max_new_tokens: int,
        *,
        temperature: float | None = None,
        top_p: float | None = None,
        seed: int | None = None,
    ) -> None:
        import torch

        eos = model.generation_config.eos_token_id
        self.stop = set(eos if isinstance(eos, list) else [eos])
        self.budget = max_new_tokens
        self.decoder = PieceDecoder(tokenizer)
        self.temperature = temperature if temperature is not None and temperature > 0 else None
        self.top_p = top_p
        self.generator = torch.Generator(device=model.device)
        if seed is not None:
            self.generator.manual_seed(seed)
        self.token = -1  # the last token taken: the input of this sequence's next step
        self.tokens = 0  # taken so far
        self.pieces = 0  # non-empty pieces answered so far
        self.done = False  # eos, or the budget spent: no more steps

    def next(self, logits: Any = None) -> str | None:
        """The text of the token ``logits`` pick ("" while a character is incomplete); once
        ``done`` (then ``logits`` is not needed), what the decoder held back, and ``None`` when
        nothing is left: the sequence has ended."""
        if not self.done:
            if self.temperature is not None:
                token = _sample(logits / self.temperature, self.top_p, self.generator)
            else:
                token = int(logits.argmax())
            if token not in self.stop:
                self.token, self.tokens = token, self.tokens + 1
                self.done = self.tokens >= self.budget
                return self._piece(self.decoder.push(token))
            self.done = True
        return self._piece(self.decoder.finish()) or None

    def _piece(self, text: str) -> str:
        self.pieces += bool(text)
        return text


class StepBatch:
    """Sequences decoded together, one token each per ``step``, that join and leave between
    steps (continuous batching on a KV cache).

    Each sequence is a row of one KV cache, its tokens aligned to the right and padded on the
    left (masked out), so every row's next position is the same column. ``add`` runs the
    newcomers' prompts through the model (prefill) and puts their rows beside the running
    ones, padding whichever is shorter; ``drop`` removes rows and the padding no row needs any
    more; a ``step`` appends to the cache in place. Rows are keyed by whatever the caller uses
    (the kit's item keys). Greedy output is the same as ``model.generate(do_sample=False)``
    for each sequence alone.
    """

    def __init__(self, model: PreTrainedModel, pad_token_id: int) -> None:
        self.model = model
        self.pad = pad_token_id
        self.cache_arg = cache_argument(model)
        self.keys: list[Any] = []  # row order
        self.cache: Any = None  # the model's KV cache: [rows, heads, T, d] per layer
        self.mask: Any = None  # [rows, T]: 1 where a real token is

    def add(self, prompts: dict[Any, list[int]]) -> dict[Any, Any]:
        """Prefill ``prompts`` (token ids by key) and add their rows; each one's next-token
        logits."""
        import torch

        if not prompts:
            return {}
        device = self.model.device
        width = max(len(ids) for ids in prompts.values())
        ids = torch.tensor([[self.pad] * (width - len(i)) + i for i in prompts.values()])
        mask = torch.tensor([[0] * (width - len(i)) + [1] * len(i) for i in prompts.values()])
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        mask = mask.to(device)
        with torch.inference_mode():
            out = self.model(
                input_ids=ids.to(device),
                attention_mask=mask,
                position_ids=positions.to(device),
                use_cache=True,
            )
        if self.keys:  # beside the running rows, the shorter side padded on the left
            span = max(self.mask.shape[1], width)
            layers = [
                (torch.cat([_left_pad(k, span), _left_pad(nk, span)]),
                 torch.cat([_left_pad(v, span), _left_pad(nv, span)]))
                for (k, v), (nk, nv) in zip(
                    _cache_tensors(self.cache), _cache_tensors(out[self.cache_arg]), strict=True
                )
            ]  # fmt: skip
            self.cache = _cache_of(layers)
            self.mask = torch.cat([_left_pad(self.mask, span), _left_pad(mask, span)])
        else:
            self.cache, self.mask = out[self.cache_arg], mask
        self.keys += list(prompts)
        return dict(zip(prompts, out.logits[:, -1], strict=True))

    def step(self, tokens: dict[Any, int]) -> dict[Any, Any]:
        """Feed each keyed row its token; the next-token logits of those rows. Rows without
        a token (ended, not dropped yet) take a masked-out pad."""
        import torch

        device = self.model.device
        fed = torch.tensor([[tokens.get(key, self.pad)] for key in self.keys], device=device)
        real = torch.tensor([[int(key in tokens)] for key in self.keys], device=device)
        positions = self.mask.sum(-1, keepdim=True)
        mask = torch.cat([self.mask, real], dim=-1)
        with torch.inference_mode():
            out = self.model(
                input_ids=fed,
                attention_mask=mask,
                position_ids=positions,
                use_cache=True,
                **{self.cache_arg: self.cache},
            )
        self.cache, self.mask = out[self.cache_arg], mask
        logits = out.logits[:, -1]
        return {key: logits[row] for row, key in enumerate(self.keys) if key in tokens}

    def drop(self, keys: Iterable[Any]) -> None:
        """Remove these rows (keys not in the batch are ignored)."""
        gone = set(keys)
        keep = [row for row, key in enumerate(self.keys) if key not in gone]
        if len(keep) == len(self.keys):
            return
        self.keys = [self.keys[row] for row in keep]
        if not keep:
            self.cache, self.mask = None, None
            return
        mask = self.mask[keep]
        start = int(mask.any(0).int().argmax())  # the first column a remaining row uses
        self.mask = mask[:, start:]
        self.cache = _cache_of(
            [(k[keep, :, start:], v[keep, :, start:]) for k, v in _cache_tensors(self.cache)]
        )


def _left_pad(tensor: Any, width: int) -> Any:
    """``tensor`` ([rows, T] or [rows, heads, T, d]) padded with zeros on the left of T."""
    import torch.nn.functional as F

    short = width - (tensor.shape[1] if tensor.dim() == 2 else tensor.shape[2])
    if short == 0:
        return tensor
    return F.pad(tensor, (short, 0) if tensor.dim() == 2 else (0, 0, short, 0))


def _cache_tensors(cache: Any) -> list[tuple[Any, Any]]:
    """A model's KV cache as (keys, values) per layer, whatever its transformers version."""
    if isinstance(cache, tuple | list):
        return [(layer[0], layer[1]) for layer in cache]
    if hasattr(cache, "layers"):
        return [(layer.keys, layer.values) for layer in cache.layers]
    return list(zip(cache.key_cache, cache.value_cache, strict=True))


def _cache_of(layers: list[tuple[Any, Any]]) -> Any:
    """A ``DynamicCache`` holding ``layers`` (transformers 4.x and 5.x)."""
    from transformers import DynamicCache

    if "ddp_cache_data" in inspect.signature(DynamicCache.__init__).parameters:
        return DynamicCache(ddp_cache_data=layers)
    return DynamicCache.from_legacy_cache(tuple(layers))


def greedy_ids(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int
) -> Iterator[int]:
    """Greedy decoding of ``prompt``, one step at a time with a KV cache; stops before eos."""
    input_ids = _prompt_ids(model, tokenizer, prompt, max_new_tokens)
    return sample_ids(model, input_ids, max_new_tokens)


def stream_greedy(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int
) -> Iterator[str]:
    """Greedy text pieces as they form: ``decode_pieces`` over ``greedy_ids``."""
    return decode_pieces(tokenizer, greedy_ids(model, tokenizer, prompt, max_new_tokens))


def greedy_tokens(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int
) -> list[str]:
    """The pieces of ``stream_greedy`` as a list; ``"".join`` of it equals ``reference_text``."""
    return list(stream_greedy(model, tokenizer, prompt, max_new_tokens))


def reference_text(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, prompt: str, max_new_tokens: int
) -> str:
    """The same greedy continuation computed with ``model.generate(do_sample=False)``."""
    import torch

    input_ids = _prompt_ids(model, tokenizer, prompt, max_new_tokens)
    with torch.inference_mode():
        output = model.generate(
            input_ids=input_ids,
            attention_mask=torch.ones_like(input_ids),
            max_new_tokens=max_new_tokens,
            do_sample=False,
        )
    return str(tokenizer.decode(output[0, input_ids.shape[1] :], skip_special_tokens=True))


if __name__ == "__main__":
    import sys
    import time

    started = time.perf_counter()
    model, tokenizer = load(sys.argv[1] if len(sys.argv) > 1 else "tiny-lm")
    print(f"build+load in {time.perf_counter() - started:.1f}s")
    for prompt in ("The lighthouse", "In the morning"):
        print(repr(prompt), "->", greedy_tokens(model, tokenizer, prompt, 40))
