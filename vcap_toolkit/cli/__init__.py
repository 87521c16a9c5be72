"""``vcap``: the parser (``parser``), the edge that runs a command and turns the toolkit's errors into
one line and an exit code (``main``), and the commands (``stage_commands``, ``library_commands``,
with ``command_io`` for their config and printing)."""
