"""Stage 1 itself: its config schema, datasets and samplers, which videos it trains on, the training
loop, the video tower's inference loop, retrieval evaluation and metrics, feature extraction for
stage 2, and Open-VCLIP's weight interpolation. Imports ``foundation``, ``reading`` and
``modeling``."""
