"""Benchmarks and the proofs of BENCHMARKS.md, run from the repository root as
``python -m benchmarks.NAME``; ``standin`` (the pretrained stand-in CLIP) and ``import_graph`` are what
only they (and the tests) use. Not installed with the toolkit."""
