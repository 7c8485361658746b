"""Speed and memory measurements (not tests): python -m benchmarks.<name>."""
