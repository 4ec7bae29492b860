"""Helpers of the benchmarks: stand-ins and baselines that run as processes of their own."""
