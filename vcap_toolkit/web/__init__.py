"""``vcap serve``: the local web page (caption, search, classify) and the path rules of what it may
read."""
