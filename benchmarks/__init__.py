"""Speed and memory measurements of the embedded mesh, set against a real Istio's figures.

Run them with ``make bench`` (``python -m benchmarks.run``); see ``benchmarks/README.md``.
Benchmarks are not tests: they record numbers and never fail on them.
"""
