"""The ceiling: the example model called in-process, no HTTP, at several batch sizes.

    python -m benchmarks.ceiling --seconds 3 --batch-sizes 1,8,16,32,64

Prints one JSON line: texts/s and CPU milliseconds per text for each batch size, and the
process's peak RSS. It calls the same
``Embedder.predict_batch`` the servers call, with the same sentence, so the served rates
divide by these to give the share of the model's own speed that serving keeps.
"""

from __future__ import annotations

import argparse
import json
import resource
import time

from benchmarks.load import SENTENCE

__all__ = ["measure"]


def measure(batch_sizes: list[int], seconds: float) -> dict[int, tuple[float, float]]:
    """Texts per second and CPU ms per text for each batch size, each for about ``seconds``."""
    from benchmarks.apps.embeddings_variants import Tuned  # the example at BENCH_DTYPE
    from examples.embeddings import EmbedIn

    model = Tuned()
    model.load()
    model.warmup()
    rates: dict[int, tuple[float, float]] = {}
    for size in batch_sizes:
        items = [EmbedIn(text=SENTENCE) for _ in range(size)]
        model.predict_batch(items)  # warm this shape
        done = 0
        started, cpu_started = time.perf_counter(), time.process_time()
        while (elapsed := time.perf_counter() - started) < seconds:
            model.predict_batch(items)
            done += size
        rates[size] = done / elapsed, 1000 * (time.process_time() - cpu_started) / done
    return rates


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0)
    parser.add_argument("--batch-sizes", default="1,8,16,32,64")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.batch_sizes.split(",")]
    measured = measure(sizes, args.seconds)
    peak_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    rates = {size: rate for size, (rate, _) in measured.items()}
    cpu_ms = {size: cpu for size, (_, cpu) in measured.items()}
    print(json.dumps({"rates": rates, "cpu_ms_per_text": cpu_ms, "peak_rss": peak_rss}))


if __name__ == "__main__":
    main()
