"""Benchmarks against known answers: the 1us0 polyglycine-helix study
(`python -m qr_phenix.benchmark.helix_1us0`)."""
