"""Load generators for `ringlock bench`. Benchmarks, not tests: they measure, never assert."""
