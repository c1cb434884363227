"""Benchmarks, run as scripts: ``python bench/<name>.py`` from the repository root."""
