"""Jobs a user runs with a trained stage-1 model: zero-shot recognition (``vcap classify`` /
``eval-classify``) and text-to-video search (``vcap index`` / ``search``)."""
