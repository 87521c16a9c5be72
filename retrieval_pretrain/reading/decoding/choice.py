"""Which backend decodes: ``video.backend`` = ``auto | decord | torchcodec | pyav``.

``auto`` takes the first usable one of ``AUTO_ORDER``: decord where it installs - the issue keeps it
the default, and every model trained so far saw decord's pixels (resized frames differ from the
others' by about a level, ``tests/test_backends.py``) -, else PyAV, else torchcodec, by measured
speed (BENCHMARKS.md, "Decoder backends", 2-core x86-64 CPU, one decoder thread). Measured, PyAV was
as fast as decord or faster in every case - 12 frames sampled from the real clips (1.0-1.9x at native
size, 1.3-2.7x at 224 short side, where decord opens and indexes the file a second time), 12 frames
of a 3-minute 720p clip (tie native, 2.3x at 224) and every frame of it (2.6x native, 1.9x at 224) -
and it installs everywhere (its wheels bundle FFmpeg, AV1 included): it is what ``auto`` gives where
decord does not install (ARM Linux, Apple silicon), and ``video.backend=pyav`` is the faster choice
on x86-64 too. torchcodec is last: the fastest only on native-size time windows of the long clip,
slower than both on the real clips, its in-decoder resize made the dense 224 read 5.7x slower than
PyAV's, and it needs FFmpeg's shared libraries on the machine. The machine was shared while
measuring (other jobs on its 2 cores): a difference under about 1.3x is noise. All three give the
same frames: the order changes speed and, for resized or 10-bit frames, pixels by a few levels.

The choice is process-wide. ``set_backend`` (``vcap`` calls it once the config is read) resolves
``auto`` once and stores the name in the environment variable ``VCAP_VIDEO_BACKEND``, which DataLoader
worker processes inherit whether they fork or spawn; a Python caller may set that variable, call
``set_backend``, or pass ``backend=`` to ``read_frames`` / ``probe_video`` per call.
"""

from __future__ import annotations

import functools
import importlib.util
import os

from retrieval_pretrain.foundation.errors import ConfigError, VideoReadError
from retrieval_pretrain.reading.decoding.base import BACKENDS, Decoder
from retrieval_pretrain.reading.decoding.decord_backend import DecordDecoder
from retrieval_pretrain.reading.decoding.pyav_backend import PyAVDecoder
from retrieval_pretrain.reading.decoding.torchcodec_backend import TorchCodecDecoder, load

ENV = "VCAP_VIDEO_BACKEND"
CHOICES = ("auto", *BACKENDS)
AUTO_ORDER = ("decord", "pyav", "torchcodec")  # decord where it installs, then by measured speed (docstring)
INSTALL = {
    "decord": "pip install decord (wheels for x86-64 Linux and Windows only)",
    "torchcodec": "pip install 'vcap-toolkit[torchcodec]'",
    "pyav": "pip install av",
}


@functools.cache
def unavailable(name: str) -> str:
    """Why backend ``name`` cannot be used here; ``""`` when it can (checked once per process)."""
    module = {"decord": "decord", "torchcodec": "torchcodec", "pyav": "av"}[name]
    if importlib.util.find_spec(module) is None:
        return f"{name} is not installed ({INSTALL[name]})"
    try:
        if name == "torchcodec":
            load()
        else:
            importlib.import_module(module)
    except Exception as e:  # torchcodec without FFmpeg's shared libraries raises RuntimeError/OSError
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = ("; it needs FFmpeg's shared libraries: apt-get install ffmpeg, brew install ffmpeg or "
                "conda install ffmpeg") if name == "torchcodec" else ""
        return f"{name} is installed but does not load ({why}){hint}"
    return ""


@functools.cache
def resolve(name: str, where: str = "video.backend") -> tuple[str, str]:
    """``(backend, note)``: the backend ``name`` stands for (``auto``: the first usable one of
    ``AUTO_ORDER``) and a note saying why. ``ConfigError`` (naming ``where``) for an unknown or
    unusable one."""
    if name not in CHOICES:
        raise ConfigError(f"{where}: {name!r} is not one of {', '.join(CHOICES)}")
    if name != "auto":
        why = unavailable(name)
        if why:
            raise ConfigError(f"{where}={name}: {why}; or choose another: {', '.join(CHOICES)}")
        return name, f"{where}={name}"
    skipped = []
    for backend in AUTO_ORDER:
        why = unavailable(backend)
        if not why:
            note = f"; {'; '.join(skipped)}" if skipped else ""
            why_first = "decord first where it installs" if backend == "decord" else "the fastest usable here"
            return backend, f"{where}=auto: {why_first}{note}"
        skipped.append(why)
    raise ConfigError(f"{where}=auto: no decoder can be used: {'; '.join(skipped)}")


def set_backend(name: str) -> str:
    """Make ``name`` (a ``video.backend`` value) this process's backend and its children's; returns
    the line to show at start-up, ``video decoder: NAME (why)``."""
    backend, note = resolve(name)
    os.environ[ENV] = backend
    return f"video decoder: {backend} ({note})"


def current(backend: str | None = None) -> str:
    """The backend a read uses: ``backend`` if given, else ``VCAP_VIDEO_BACKEND``, else ``auto``."""
    if backend is not None:
        return resolve(backend, "backend")[0]
    return resolve(os.environ.get(ENV) or "auto", ENV if os.environ.get(ENV) else "video.backend")[0]


def open_decoder(path: str, backend: str, num_threads: int) -> Decoder:
    """A ``Decoder`` of ``path`` by ``backend`` (a resolved name)."""
    if backend == "decord":
        return DecordDecoder(path, num_threads)
    if backend == "torchcodec":
        return TorchCodecDecoder(path, num_threads)
    return PyAVDecoder(path, num_threads)


def who_decodes(path: str, failed: str) -> list[str]:
    """The usable backends other than ``failed`` that open ``path`` and decode its first frame (the
    error path of a codec one backend lacks)."""
    able = []
    for backend in BACKENDS:
        if backend == failed or unavailable(backend):
            continue
        try:
            open_decoder(path, backend, 1).native_size()
        except VideoReadError:
            continue
        able.append(backend)
    return able
