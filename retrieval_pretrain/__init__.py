"""The ground floor both stages stand on, and stage 1 (retrieval pre-training, CLIP4Clip's recipe).

Four rooms, each importing only the ones listed before it (``tests/test_layers.py`` holds this):

* ``foundation``: errors and exit codes, the typed config loader, atomic writers, the run log,
  Accelerate set-up, checkpoints, run folders and folder locks. Imports nothing of the toolkit.
* ``reading``: videos (sampling, decoding, integrity, CLIP preprocessing), dataset formats and
  their table, label lists, the feature cache on disk, ``vcap data check``. Imports ``foundation``.
* ``modeling``: stage 1's model parts (backbones, heads, st_mix, prompts, X-CLIP, tightTransf,
  losses, distillation), the one typed description of a trained model and the one builder, model
  folders. Imports ``foundation``.
* ``stage1``: stage 1's config, datasets, training, retrieval evaluation, the video tower's
  inference loop, feature extraction, weight interpolation. Imports the three above.
"""
