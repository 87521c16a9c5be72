"""Model folders written by the release before the layered layout (issue 24) still load and compute
what that release computed with them: ``tests/data/legacy_v1.tar.xz`` holds a stage-1 and a stage-2
folder, four clips and the old release's numbers (``tests/data/make_legacy_v1.py`` made it, running
the old code). Stage 1: the same video embeddings; stage 2: the same first-step logits and
captions, through today's ``vcap caption`` and Python API."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import torch

from caption.pipeline import CaptionPipeline
from decoders.config import DecodeConfig
from retrieval_pretrain.modeling.model_folder import from_pretrained
from retrieval_pretrain.stage1.data import Preprocess
from retrieval_pretrain.stage1.encode import embed_videos, encode_video_batches

ARCHIVE = Path(__file__).parent / "data" / "legacy_v1.tar.xz"
VCAP = Path(sys.executable).with_name("vcap")
CPU = torch.device("cpu")

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def legacy(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("legacy")
    with tarfile.open(ARCHIVE) as tar:
        tar.extractall(folder, filter="data")
    return folder / "legacy_v1"


def _expected(legacy: Path) -> dict:
    return json.loads((legacy / "expected.json").read_text())


def _videos(legacy: Path) -> list[tuple[str, Path]]:
    return [(v, legacy / "videos" / f"{v}.mp4") for v in _expected(legacy)["videos"]]


def test_an_old_stage1_folder_gives_the_old_embeddings(legacy):
    model, spec = from_pretrained(legacy / "stage1_model")
    assert spec.num_frames == 4 and spec.head == "seqTransf" and spec.eval_sampling == "uniform"
    emb, failed = embed_videos(model, _videos(legacy), Preprocess.for_model(spec), CPU, 4, 0,
                               method=spec.eval_sampling)
    assert not failed
    for video, want in _expected(legacy)["stage1_embeddings"].items():
        torch.testing.assert_close(emb[video], torch.tensor(want), atol=1e-6, rtol=0)


def test_an_old_caption_folder_gives_the_old_logits_and_captions(legacy):
    pipe = CaptionPipeline.from_pretrained(legacy / "stage2_model", device="cpu")
    (ids, seq, mask, failed), = list(encode_video_batches(pipe.tower, _videos(legacy),
                                                          Preprocess.for_model(pipe.tower_spec), CPU, 4, 0))
    assert not failed
    with torch.no_grad():
        bos = torch.full((len(ids), 1), pipe.model.config.decoder_start_token_id)
        logits = pipe.model(frame_features=seq.float(), frame_mask=mask, decoder_input_ids=bos).logits[:, 0]
    want = _expected(legacy)
    for i, video in enumerate(ids):
        torch.testing.assert_close(logits[i, :12], torch.tensor(want["stage2_first_logits"][video]), atol=1e-5, rtol=0)
        assert int(logits[i].argmax()) == want["stage2_logits_argmax"][video]
    captions = pipe.caption([p for _, p in _videos(legacy)], num_beams=2)
    assert {Path(p).stem: c for p, c in captions.items()} == want["captions"]


def test_vcap_caption_reads_an_old_folder(legacy):
    videos = [str(p) for _, p in _videos(legacy)]
    r = subprocess.run([str(VCAP), "caption", *videos, "--model", str(legacy / "stage2_model"), "--beam", "2",
                        "--json"], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    captions = out.get("captions", out)
    assert {Path(p).stem: c for p, c in captions.items()} == _expected(legacy)["captions"]


def test_a_new_caption_folder_records_decoding_as_the_old_one_did(legacy):
    old = json.loads((legacy / "stage2_model" / "config.json").read_text())["decode"]
    assert DecodeConfig().to_saved().keys() == old.keys()  # batch_size is the machine's, never recorded


def test_a_caption_folder_whose_video_tower_is_not_a_mapping_is_one_line(legacy, tmp_path):
    folder = tmp_path / "s2"
    shutil.copytree(legacy / "stage2_model", folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "video_tower": [1]}))
    r = subprocess.run([str(VCAP), "caption", str(_videos(legacy)[0][1]), "--model", str(folder)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 5 and "Traceback" not in r.stderr, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("vcap: ") and "'video_tower' must be a mapping" in r.stderr
