"""Stage 2's caption model (1-layer video encoder + 3-layer decoder) and its loss; see ``decoders.model``."""
