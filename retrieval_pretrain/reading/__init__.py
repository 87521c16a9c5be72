"""Reading what the user brings: videos (frame sampling and decoding, integrity checks, CLIP
preprocessing), annotation and label formats (one table of formats, ``formats.py``), label lists and
prompt templates, the per-video feature cache on disk, and ``vcap data check``. Imports
``foundation`` only."""
