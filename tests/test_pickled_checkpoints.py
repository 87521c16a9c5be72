"""A local CLIP checkpoint that is a pickle with code is refused unrun and named in one warning line,
whatever pickle protocol wrote it (torch's own refusal is worded differently per protocol: the
protocol-4 and -5 ones name no callable, so the warning README promises was missing)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest
import torch

from retrieval_pretrain.foundation.errors import WeightsUnavailableError
from retrieval_pretrain.foundation.pickles import pickled_code
from retrieval_pretrain.modeling.backbones import build_clip
from retrieval_pretrain.stage1.config import ClipConfig

TINY = {"embed_dim": 32, "vision_cfg": {"layers": 1, "width": 32, "patch_size": 16, "image_size": 32, "head_width": 16},
        "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}


class _Touch:
    """Pickles as a call of pathlib.Path.touch on a marker file: if a load ran it, the file appears."""

    def __init__(self, target: Path):
        self.target = target

    def __reduce__(self):
        return (Path.touch, (self.target,))


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_a_pickle_with_code_is_refused_unrun_and_named(tmp_path, capsys, protocol):
    marker = tmp_path / "RAN"
    evil = tmp_path / f"evil{protocol}.pt"
    evil.write_bytes(pickle.dumps({"state_dict": {"w": _Touch(marker)}}, protocol=protocol))
    called = pickled_code(str(evil))  # protocol 2 reaches Path.touch through getattr; 4 and 5 name it
    assert called[0] == ("__builtin__.getattr" if protocol == 2 else "pathlib.Path.touch"), called
    with pytest.raises(WeightsUnavailableError, match="would call"):
        build_clip(ClipConfig(model="tiny", pretrained=str(evil), custom=TINY))
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"warning: {evil} holds pickled code ("), err  # one line, named
    assert not marker.exists()  # never run


def test_a_plain_tensor_checkpoint_names_no_code(tmp_path):
    torch.save({"w": torch.zeros(2)}, tmp_path / "ok.pt")  # torch's zip format
    (tmp_path / "old.pt").write_bytes(pickle.dumps({"w": [1, 2]}, protocol=2))
    (tmp_path / "text.pt").write_text("not a pickle at all")
    assert pickled_code(str(tmp_path / "ok.pt")) == []
    assert pickled_code(str(tmp_path / "old.pt")) == []
    assert pickled_code(str(tmp_path / "text.pt")) == []
