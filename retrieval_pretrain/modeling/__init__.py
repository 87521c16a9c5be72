"""Stage 1's model parts and how a model is described, built and stored: open_clip and X-CLIP
backbones, temporal heads, space-time mixing, prompts, tightTransf, losses, momentum distillation,
the typed description of a trained model and the one builder from it, model folders. Imports
``foundation`` only; a network module never opens a file (``model_folder`` does the I/O)."""
