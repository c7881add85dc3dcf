"""Benchmark runner: grid expansion, cell cache, scheduling, results, report and plots."""
