"""Benchmarks and the proofs of BENCHMARKS.md, run from the repository root as
``python -m benchmarks.NAME``; ``standin`` (the pretrained stand-in CLIP) and ``common`` are what only
they use. Not installed with the toolkit."""
