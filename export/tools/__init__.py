"""Measuring what is served: perf_analyzer runs and input files (perf_analyzer.py), per-step
statistics (stats.py), and generated texts and images for load tests and benchmarks
(payloads.py)."""
