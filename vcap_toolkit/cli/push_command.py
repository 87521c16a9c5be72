"""``vcap push MODEL_DIR org/name``: a model folder to the Hugging Face Hub, with its model card.

Before anything is sent the folder is loaded as every load does it (strictly: each weight, and a
caption model's video tower with its fingerprint), so a folder that is not a vcap model folder, or
is incomplete or corrupt, is refused with one line (exit 5). Only the model's own files go up
(``model_card.STAGE1_FILES`` / ``CAPTION_FILES``: no checkpoints, logs or pickles), with the generated
``README.md``, in ONE commit (``HfApi.create_commit``, what ``upload_folder`` makes from a folder: the
card is added to the same commit, so the repository never holds the model without its card, and the
folder is read in place, not copied). ``--dry-run OUT_DIR`` writes the card and ``files.txt`` (each
file, its bytes and SHA-256) there instead. The last line of stdout is a JSON summary.
"""

from __future__ import annotations

import argparse
import hashlib
from pathlib import Path
from typing import TYPE_CHECKING

from huggingface_hub import CommitOperationAdd, HfApi, constants
from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError, OfflineModeIsEnabled
from huggingface_hub.utils import validate_repo_id

from retrieval_pretrain.foundation.atomic import write_folder
from retrieval_pretrain.foundation.errors import ConfigError, StorageError
from vcap_toolkit.cli.command_io import print_json

if TYPE_CHECKING:
    from vcap_toolkit.jobs.model_card import VcapFolder

CARD_NAME = "README.md"
LIST_NAME = "files.txt"


def add_push_parser(sub: argparse._SubParsersAction) -> None:
    """``vcap push`` in the ``vcap`` parser (``vcap_toolkit.cli.parser``)."""
    p = sub.add_parser(
        "push", help="upload a model folder to the Hugging Face Hub, with a generated model card",
        description="Upload a vcap model folder (RUN/model or RUN2/model) to the Hub repository org/name, in one "
                    "commit with a generated README.md model card: what the model is (backbone, head, frames, caption "
                    "model), the data and config it was trained on and the metrics it recorded (read from the run "
                    "folder around it and its eval_*/metrics.json), the commands that made it and how to use it "
                    "('vcap caption VIDEO --model org/name'). The folder is loaded strictly first; only the model's "
                    "files are uploaded (config.json, model.safetensors, tokenizer.model, video_tower/), never the "
                    "run's checkpoints or logs. The card quotes the run's config, paths included: read it with "
                    "--dry-run first. Log in with 'hf auth login' (or HF_TOKEN). Elsewhere, org/name[@revision] "
                    "is accepted wherever a model folder is (README: Models from the Hub).")
    p.add_argument("model_dir", metavar="MODEL_DIR", help="the model folder (RUN/model or RUN2/model)")
    p.add_argument("repo_id", metavar="org/name", help="the Hub model repository (created if it does not exist)")
    p.add_argument("--revision", default=None, metavar="BRANCH",
                   help="commit to this branch (created from main if needed; default main)")
    p.add_argument("--private", action="store_true",
                   help="create the repository private (an existing one is unchanged)")
    p.add_argument("--dry-run", default=None, metavar="OUT_DIR",
                   help="upload nothing: write the card (OUT_DIR/README.md) and the file list with sizes and SHA-256 "
                        "(OUT_DIR/files.txt) to a new or empty folder")
    p.add_argument("--token", default=None,
                   help="a Hub token with write access (default: HF_TOKEN or the one 'hf auth login' saved; a token "
                        "on the command line is visible to other users of this machine)")


def check_repo_id(repo_id: str) -> None:
    """``org/name`` as the Hub spells repositories; ``ConfigError`` otherwise."""
    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ConfigError(f"{repo_id}: not a Hub repository id ({str(e).splitlines()[0]}); write org/name") from None
    if repo_id.count("/") != 1:
        raise ConfigError(f"{repo_id}: write the repository as org/name (your user name or an organisation, a slash, "
                          "the model's name)")


def checked_folder(folder: str) -> VcapFolder:
    """The folder, described and then loaded strictly (``ModelFolderError`` when it is not a vcap
    model folder, or is incomplete or corrupt)."""
    from vcap_toolkit.jobs.model_card import read_folder  # deferred: torch and open_clip; keeps vcap --help fast

    described = read_folder(folder)
    if described.kind == "caption":
        from caption.pipeline import CaptionPipeline  # deferred: torch and transformers, only for a push

        CaptionPipeline.from_pretrained(described.folder, device="cpu")
    else:
        from retrieval_pretrain.modeling.model_folder import from_pretrained  # deferred: torch, open_clip

        from_pretrained(described.folder)
    return described


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def dry_run(described: VcapFolder, card: str, out: Path) -> list[dict]:
    """Write ``out/README.md`` and ``out/files.txt`` (swapped in together); returns the file list.
    ``out`` must be new, empty, or an earlier dry run's (it is replaced whole)."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--dry-run {out}: a file, not a folder")
    others = sorted(p.name for p in out.iterdir() if p.name not in (CARD_NAME, LIST_NAME)) if out.is_dir() else []
    if others:
        raise ConfigError(f"--dry-run {out}: the folder holds other files ({', '.join(others[:3])}); give a new or "
                          "empty folder (it is replaced whole)")
    files = [{"path": name, "bytes": (described.folder / name).stat().st_size,
              "sha256": _sha256(described.folder / name)} for name in described.files]
    listing = "".join(f"{f['path']}\t{f['bytes']}\t{f['sha256']}\n" for f in files)
    listing += f"{CARD_NAME}\t{len(card.encode())}\t{hashlib.sha256(card.encode()).hexdigest()}\n"

    def fill(tmp: Path) -> None:
        (tmp / CARD_NAME).write_text(card, encoding="utf-8")
        (tmp / LIST_NAME).write_text(listing, encoding="utf-8")

    write_folder(out, fill)
    return files


def _unreachable(repo_id: str, err: Exception) -> StorageError:
    """One line: why the push did not happen, and what to do."""
    first = (str(err).splitlines() or [""])[0][:300]
    if isinstance(err, LocalTokenNotFoundError):
        why = "this machine is not logged in to the Hub; run 'hf auth login', or set HF_TOKEN, or pass --token"
    elif isinstance(err, OfflineModeIsEnabled):
        why = "HF_HUB_OFFLINE is set; unset it on a machine with internet to push"
    elif isinstance(err, HfHubHTTPError) and getattr(err.response, "status_code", None) in (401, 403):
        why = (f"the Hub refused ({first}); log in with a token that may write to {repo_id.split('/')[0]} "
               "(hf auth login, or HF_TOKEN, or --token)")
    elif isinstance(err, HfHubHTTPError):
        why = f"the Hub answered: {first}"
    else:
        why = (f"the Hub ({constants.ENDPOINT}) cannot be reached ({type(err).__name__}: {first}); check the "
               "connection (and HF_ENDPOINT), or push from a machine with internet; --dry-run OUT_DIR shows what "
               "would be uploaded")
    return StorageError(f"{repo_id}: nothing was uploaded: {why}")


def _network_error(err: Exception) -> bool:
    """An error of the Hub or of reaching it (the HTTP client's own types differ between
    huggingface_hub versions: requests, httpx, httpx2), not a bug."""
    module = type(err).__module__.split(".")[0]
    return isinstance(err, (HfHubHTTPError, ConnectionError, TimeoutError, LocalTokenNotFoundError)) or module in ("httpx", "httpx2", "requests",
                                                                                          "urllib3")


def upload(described: VcapFolder, card: str, args: argparse.Namespace) -> dict:
    """Create the repository (and branch) when needed, then one commit of the files and the card."""
    api = HfApi(token=args.token)
    operations = [CommitOperationAdd(path_in_repo=name, path_or_fileobj=str(described.folder / name))
                  for name in described.files]
    operations.append(CommitOperationAdd(path_in_repo=CARD_NAME, path_or_fileobj=card.encode("utf-8")))
    try:
        api.create_repo(args.repo_id, private=args.private, exist_ok=True)
        if args.revision:
            api.create_branch(args.repo_id, branch=args.revision, exist_ok=True)
        info = api.create_commit(args.repo_id, operations=operations, revision=args.revision,
                                 commit_message=f"vcap push: {described.kind} model ({len(described.files)} files "
                                                "+ model card)")
    except Exception as e:  # sorted by _network_error; anything else is a bug and keeps its traceback
        if not _network_error(e):
            raise
        raise _unreachable(args.repo_id, e) from None
    return {"repo_id": args.repo_id, "revision": args.revision or "main", "commit": info.oid,
            "url": info.commit_url, "files": [*described.files, CARD_NAME]}


def push(args: argparse.Namespace) -> int:
    """``vcap push``: check, write the card, then upload (or with --dry-run write it locally)."""
    from vcap_toolkit.jobs.model_card import model_card  # deferred: torch and open_clip; keeps vcap --help fast

    check_repo_id(args.repo_id)
    described = checked_folder(args.model_dir)
    sizes = {name: (described.folder / name).stat().st_size for name in described.files}
    card = model_card(described, args.repo_id, sizes)
    if args.dry_run:
        files = dry_run(described, card, Path(args.dry_run))
        print_json({"repo_id": args.repo_id, "kind": described.kind, "dry_run": str(args.dry_run),
                    "card": str(Path(args.dry_run) / CARD_NAME), "files": [f["path"] for f in files] + [CARD_NAME],
                    "bytes": sum(f["bytes"] for f in files)})
        return 0
    print_json({**upload(described, card, args), "kind": described.kind})
    return 0
