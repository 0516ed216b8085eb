"""Chorus benchmarks: server throughput, quantization trade-offs, and peers on the same audio.

``chorus bench throughput | quant | peers`` (see ``bench/cli.py``); results land in
``bench/results/<name>/`` as ``result.json`` + ``table.md`` + ``plot.png``.
"""
