"""Benchmarks (importable as ``attnspec.bench``; run them through ``attnspec bench ...``).

Every benchmark times a method and its baseline side by side in one run and reports ratios, with the
command that reproduces the figures. Timings never appear in tests.
"""
