"""The ground floor both stages stand on (errors, config, atomic writing, video sampling, annotation
formats, Accelerate set-up, checkpoints, model folders) and stage 1: the CLIP video-text model built
from parts, its losses, training, retrieval evaluation and feature extraction."""
