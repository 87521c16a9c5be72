"""Models by name: a Hugging Face Hub id wherever a model folder is taken.

``resolve_model_folder(ref)`` turns what a user typed for a model folder (``--model``,
``--init-from``, ``pretrain.init_from``, ``vcap serve``'s models) into a folder on this machine:

* a path that exists is that folder or file, always - a folder named ``org/name`` here is a folder;
* a path written as one (``./org/name``, ``../x``, ``/abs``, ``~/x``, or with more than one ``/``)
  is local, whether it exists or not (the caller then says what is missing);
* otherwise ``org/name`` or ``org/name@revision`` (a branch, tag or commit hash) is a model
  repository on the Hub, fetched through ``huggingface_hub.snapshot_download``: its cache
  (``HF_HUB_CACHE``, ``HF_HOME``), offline mode (``HF_HUB_OFFLINE=1``: the cache only) and revision
  pinning are the library's own. The snapshot folder it returns then gets every check a local
  folder gets (the loaders are the same).

An id that cannot be had - not cached while offline, the Hub unreachable, no such repository or
revision - is a ``ModelFolderError`` (exit 5) naming the id and what to do. ``huggingface_hub``
reads its environment variables once, when it is imported.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from huggingface_hub import constants, snapshot_download
from huggingface_hub.errors import (
    GatedRepoError,
    HfHubHTTPError,
    HFValidationError,
    IncompleteSnapshotError,
    LocalEntryNotFoundError,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from retrieval_pretrain.foundation.errors import ModelFolderError

_ID = re.compile(r"(?P<repo>[^/@\s]+/[^/@\s]+)(?:@(?P<revision>\S+))?")
_LOCAL_PREFIXES = ("./", "../", "/", "~", ".\\")


def parse_model_id(ref: str | os.PathLike) -> tuple[str, str | None] | None:
    """``(repo_id, revision or None)`` when ``ref`` is read as a Hub id (see the module docstring),
    else None (a local path). A path that exists is never an id."""
    text = str(ref)
    if not text or text.startswith(_LOCAL_PREFIXES) or os.path.lexists(os.path.expanduser(text)):
        return None
    m = _ID.fullmatch(text)
    if m is None:
        return None
    try:
        validate_repo_id(m["repo"])
    except HFValidationError:
        return None
    return m["repo"], m["revision"]


def resolve_model_folder(ref: str | os.PathLike, what: str = "model") -> Path:
    """The folder ``ref`` names: itself when it is a local path, else the cached snapshot of the
    Hub id (downloaded first unless offline). ``what`` names the setting in messages
    (``--model``, ``pretrain.init_from``). ``ModelFolderError`` when an id cannot be had."""
    parsed = parse_model_id(ref)
    if parsed is None:
        return Path(ref)
    repo, revision = parsed
    try:
        return Path(snapshot_download(repo, revision=revision, local_files_only=constants.is_offline_mode()))
    except (RevisionNotFoundError, RepositoryNotFoundError, LocalEntryNotFoundError, HfHubHTTPError) as e:
        raise ModelFolderError(_unavailable(str(ref), what, repo, revision, e)) from None


def _unavailable(ref: str, what: str, repo: str, revision: str | None, err: Exception) -> str:
    """One message: which id, why it cannot be had, and what to do."""
    at = f" at revision '{revision}'" if revision else ""
    fetch = f"hf download {repo}" + (f" --revision {revision}" if revision else "")
    head = (f"{what} {ref}: no folder of that name here ({os.getcwd()}), and the Hugging Face Hub model {repo}{at} "
            "cannot be had: ")
    local = f"or pass a model folder (./{ref.split('@')[0]} forces a local path)"
    if isinstance(err, RevisionNotFoundError):
        return head + f"the repository has no revision '{revision}'; give a branch, tag or commit hash it has, {local}"
    if isinstance(err, GatedRepoError):
        return head + f"it is gated; accept its terms on the Hub and log in (hf auth login, or HF_TOKEN), {local}"
    if isinstance(err, RepositoryNotFoundError):
        return head + ("no such repository (or it is private and this machine is not logged in: hf auth login, or "
                       f"HF_TOKEN); check the id, {local}")
    if isinstance(err, IncompleteSnapshotError):
        return head + f"its cached copy is incomplete; run '{fetch}' with network access to complete it, {local}"
    cache = constants.HF_HUB_CACHE
    if constants.is_offline_mode():
        why = f"HF_HUB_OFFLINE is set and it is not in the cache ({cache})"
    elif isinstance(err, LocalEntryNotFoundError):
        cause = err.__cause__ or err.__context__
        why = (f"the Hub ({constants.ENDPOINT}) cannot be reached"
               + (f" ({type(cause).__name__}: {str(cause).splitlines()[0][:200]})" if cause and str(cause) else "")
               + f" and it is not in the cache ({cache})")
    else:
        why = f"the Hub answered {str(err).splitlines()[0][:200]}"
    return (head + why + f". To use it without network: on a machine with internet run '{fetch}', copy its "
            f"cache folder (HF_HUB_CACHE, default ~/.cache/huggingface/hub) here and set HF_HUB_CACHE to it and "
            f"HF_HUB_OFFLINE=1; {local}")
