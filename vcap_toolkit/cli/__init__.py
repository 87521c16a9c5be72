"""``vcap``: the parser (``parser``) and the edge that runs a command and turns the toolkit's errors
into one line and an exit code (``main``)."""
