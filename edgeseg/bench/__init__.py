"""Benchmark harness: latency, memory and accuracy per model x precision x backend."""
