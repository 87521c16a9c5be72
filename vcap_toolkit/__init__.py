"""The front door: the ``vcap`` command line (``cli``), the local web page (``web``), HTML reports of
runs and captions (``reports``), and the jobs that use a trained stage-1 model (``jobs``: zero-shot
recognition, search). Stands on ``caption`` (stage 2), ``decoders`` and ``retrieval_pretrain``;
nothing imports it."""

import os as _os

# Passive OpenMP waits for every entry point, set before torch loads (see caption/__init__.py); what
# the user had set is kept (vcap demo chooses active waits when the user set nothing: cli.main).
USER_OMP_WAIT_POLICY = _os.environ.get("OMP_WAIT_POLICY")
DEFAULT_OMP_WAIT_POLICY = "PASSIVE"
_os.environ.setdefault("OMP_WAIT_POLICY", DEFAULT_OMP_WAIT_POLICY)
