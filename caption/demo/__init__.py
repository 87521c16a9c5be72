"""``vcap demo``: the whole two-stage pipeline on generated videos, on a CPU in minutes.

* ``data``: the procedural dataset (real H.264 mp4 files of a coloured shape moving, with
  paraphrased captions and the attributes each caption names), built on ``render`` (frames,
  encoding) and ``captions`` (the vocabulary, caption templates, attribute accuracy).
* ``run``: generates the data and runs every stage as a user would, with ``tiny_demo.yaml``
  (package data, the one copy of the demo's configuration).
"""

from caption.demo.run import CONFIG_PATH, demo_config, run_demo

__all__ = ["CONFIG_PATH", "demo_config", "run_demo"]
