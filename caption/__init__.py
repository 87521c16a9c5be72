"""Stage 2 (caption training, metrics, the end-to-end pipeline) and the
demo; built on ``retrieval_pretrain`` (stage 1 and the foundation) and ``decoders`` (the caption
model)."""

import os as _os

# Passive OpenMP waits for every entry point of the toolkit (`vcap`, `python -m benchmarks.standin`,
# the benchmarks), set before torch loads: spinning threads run up to 50x slower on a CPU shared with
# other work (BENCHMARKS.md, "CPU threading"); a value the user set wins.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import decoders as _decoders  # noqa: E402

if getattr(_decoders, "DISTRIBUTION", None) != "vcap-toolkit":
    raise ImportError(
        f"'import decoders' found {getattr(_decoders, '__file__', None) or 'another package'}, not vcap-toolkit's "
        "decoders package: PyPI's unrelated 'decoders' project is installed in this environment and shadows it. "
        "Uninstall it (pip uninstall decoders) and reinstall vcap-toolkit, or use a separate virtual environment."
    )
