"""Serving benchmarks: the example model served four ways, driven by the same load generator.

Run ``python -m benchmarks.serving --help``; ``docs/performance.md`` shows the latest results.
"""
