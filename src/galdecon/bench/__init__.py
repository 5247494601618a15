"""The paper's benchmarks, the floor of an iteration and the reference-style loop."""
