"""Benchmarks: flux_async against the vendor's SDK and a bare-aiohttp floor.

Run everything with ``python -m benchmarks`` (or ``python benchmarks/run.py``);
``--quick`` for a run under a minute. See ``benchmarks/README.md``.
"""
