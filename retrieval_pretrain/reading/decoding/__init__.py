"""Decoder backends for ``retrieval_pretrain.reading.video``: decord, torchcodec and PyAV behind one
small interface (``base.Decoder``), one module per backend, and the rule that picks one
(``choice``: ``video.backend``, ``auto``). ``video.py`` keeps the sampling, the checks and the public
functions; a backend only opens a file (frame count, start times, rate, end, upright size) and
decodes the frames asked for, optionally resized in the decoder.
"""
