"""The demo's configuration: one YAML, shipped inside the package, that `vcap demo` runs, plus how the
demo runs on this machine (``SPEED_OVERRIDES``: bf16 where the CPU has it natively, channels-last
frames, no loader workers) - which must keep the model the same and the numbers reproducible."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from caption.config import load
from caption.demo import CONFIG_PATH, demo_config
from caption.demo import data as demo_data
from caption.demo.run import SPEED_OVERRIDES
from retrieval_pretrain.foundation import accelerate_setup
from retrieval_pretrain.foundation.accelerate_setup import make_accelerator, resolve_precision
from retrieval_pretrain.foundation.errors import ConfigError
from retrieval_pretrain.modeling.parts import build_video_text_model
from retrieval_pretrain.stage1.train import channels_last_frames
from retrieval_pretrain.stage1.train import train as pretrain


def test_demo_runs_the_yaml_shipped_in_the_package(tmp_path):
    import caption.demo

    assert CONFIG_PATH.parent == Path(caption.demo.__file__).parent and CONFIG_PATH.is_file()
    raw = yaml.safe_load(CONFIG_PATH.read_text())
    cfg = demo_config(tmp_path, quick=False, seed=3)
    # every value of the file reaches the config, and the demo only adds where its data is and how it runs
    assert cfg.pretrain.epochs == raw["pretrain"]["epochs"] and cfg.caption.epochs == raw["caption"]["epochs"]
    assert cfg.clip.custom == raw["clip"]["custom"] and cfg.pretrain.freeze == raw["pretrain"]["freeze"]
    assert (cfg.data.annotations, cfg.data.videos, cfg.run.seed) == (str(tmp_path / "annotations.jsonl"),
                                                                     str(tmp_path), 3)
    plain = load(CONFIG_PATH, [f"data.annotations={tmp_path / 'annotations.jsonl'}", f"data.videos={tmp_path}",
                               "run.seed=3", *SPEED_OVERRIDES])
    assert cfg == plain
    # the speed settings change how the demo runs, never the YAML's model or schedule
    assert (cfg.run.mixed_precision, cfg.run.channels_last, cfg.run.num_workers) == ("auto", True, 0)
    assert all(k.startswith("run.") for k in SPEED_OVERRIDES)
    quick = demo_config(tmp_path, quick=True)
    # a miniature: fewer training steps in each stage (a third of the videos; stage 2 may take more epochs
    # of them - 6 epochs left the quick demo's captions naming the motion at chance, 0.17)
    small, full = demo_data.quick_spec().num_train, demo_data.DemoSpec().num_train
    assert small * quick.pretrain.epochs < full * cfg.pretrain.epochs
    assert small * quick.caption.epochs < full * cfg.caption.epochs
    assert (quick.run, quick.clip, quick.video) == (demo_config(tmp_path, seed=0).run, cfg.clip, cfg.video)
    assert cfg.clip.custom and cfg.clip.pretrained is None  # a from-scratch CLIP: no download
    assert (cfg.caption.encoder_layers, cfg.caption.decoder_layers, cfg.pretrain.head) == (1, 3, "seqTransf")


def test_the_users_overrides_reach_the_demos_config(tmp_path):
    cfg = demo_config(tmp_path, quick=True, overrides=["pretrain.head=seqLSTM", "pretrain.epochs=3",
                                                       "run.mixed_precision='no'"])
    assert (cfg.pretrain.head, cfg.pretrain.epochs) == ("seqLSTM", 3)  # applied after --quick's own
    assert cfg.run.mixed_precision == "no"  # and after the speed settings
    assert cfg.caption.epochs == demo_config(tmp_path, quick=True).caption.epochs
    # a refused value is quoted alone, not beside the demo's own setting of that key
    with pytest.raises(ConfigError, match=r"^override 'run.num_workers=-1' \(over .*must be >= 0"):
        demo_config(tmp_path, overrides=["run.num_workers=-1"])



@pytest.mark.parametrize("name", ["#x", "a: b", "[1]", "'q", "true", "{}", "x=y", "  spaced  ", "emo\U0001F600",
                                  "\\ud83d\\ude00", "\\\U0001F600", "\udcff", "a\u2028b", "x\x85"])
def test_any_output_folder_name_is_the_demos_data_path_verbatim(tmp_path, name):
    """The demo points its config at ``OUTPUT/data`` through overrides, which are YAML: a folder
    named '#x' read as a comment (an empty path) and 'a: b' as a mapping, refused with a message
    about an override the user never wrote (a hostile test's find)."""
    data = tmp_path / name / "data"
    cfg = demo_config(data)
    assert (cfg.data.annotations, cfg.data.videos) == (str(data / "annotations.jsonl"), str(data))

@pytest.mark.parametrize("caps, expected", [
    ({"avx512_bf16": True, "amx_bf16": False}, "bf16"),  # the 2-core AMD EPYC of BENCHMARKS.md
    ({"avx512_bf16": False, "amx_bf16": True}, "bf16"),  # a Xeon with AMX
    ({"avx512_bf16": False, "amx_bf16": False}, "no"),  # AVX2 or plain AVX-512: bf16 in software, fp32 kept
    ({}, "no"),  # a CPU torch reports nothing about (ARM)
])
def test_auto_precision_is_bf16_only_where_the_cpu_has_it(monkeypatch, capsys, caps, expected):
    monkeypatch.setattr(accelerate_setup.torch.cpu, "get_capabilities", lambda: caps)
    assert resolve_precision("auto", cpu=True) == expected
    assert "run.mixed_precision=auto: " + ("bf16 autocast" if expected == "bf16" else "fp32") in capsys.readouterr().err
    for given in ("no", "bf16", "fp16"):  # an explicit choice is kept, whatever the CPU
        assert resolve_precision(given, cpu=True) == given
    assert make_accelerator("auto", 1, "cpu", 0).mixed_precision == expected


def test_channels_last_frames_are_the_same_frames_in_the_faster_layout():
    cfg = demo_config(Path("unused"))
    torch.manual_seed(0)
    model = build_video_text_model(cfg).eval()
    frames = torch.randn(3, cfg.video.num_frames, 3, 64, 64)  # (B, T, 3, H, W)
    laid = channels_last_frames(frames)
    assert torch.equal(laid, frames) and laid.shape == frames.shape
    assert laid.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    assert not frames.flatten(0, 1).is_contiguous(memory_format=torch.channels_last)
    feats = torch.randn(3, 4, 128)  # cached image-tower features (prompt tuning) go through untouched
    assert channels_last_frames(feats) is feats
    with torch.no_grad():  # the model computes the same function of either layout (fp32: up to rounding)
        a, b = model.encode_frames(frames), model.encode_frames(laid)
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    assert a.abs().mean() > 0.1  # features, not zeros


@pytest.mark.parametrize("user, overrides, expected", [
    (None, [], "ACTIVE"),  # nothing set: spinning threads, the fast choice on an idle machine
    ("PASSIVE", [], "PASSIVE"),  # the user's choice stays
    ("ACTIVE", [], "ACTIVE"),
    (None, ["run.num_workers=2"], "PASSIVE"),  # loader workers would compete with spinning threads
    (None, ["run={num_workers: 2}"], "PASSIVE"),  # the same, given as a section
    (None, ["run.num_workers=2", "run.num_workers=0"], "ACTIVE"),  # the last value counts, as in the config
    ("later:passive", [], "passive"),  # library use: set after vcap_toolkit loaded, still the user's
    ("later:ACTIVE", [], "ACTIVE"),
])
def test_vcap_demo_waits_actively_unless_the_user_chose(user, overrides, expected):
    """OMP_WAIT_POLICY is read once, when torch loads: vcap demo sets ACTIVE before that (a step
    1.5-1.6x faster on an idle 2-core Xeon, BENCHMARKS.md) unless the user chose or the config has
    loader workers."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    later = user.split(":")[1] if user and user.startswith("later:") else None
    if user and not later:
        env["OMP_WAIT_POLICY"] = user
    code = ("import os; from pathlib import Path; from vcap_toolkit.cli.main import _demo_wait_policy; "
            "from caption.demo import demo_config; "
            + (f"os.environ['OMP_WAIT_POLICY'] = {later!r}; " if later else "") +
            f"_demo_wait_policy(demo_config(Path('unused'), overrides={overrides!r})); "
            "print(os.environ['OMP_WAIT_POLICY'], os.environ.get('GOMP_SPINCOUNT'))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    ours = user is None and expected == "ACTIVE"  # the demo chose: active waits, spinning ~3 ms
    assert proc.stdout.split() == [expected, "300000" if ours else "None"]
    assert ("OpenMP threads wait actively" in proc.stderr) == ours
    # a spin count the user set stays theirs
    code = code.replace("import os;", "import os; os.environ['GOMP_SPINCOUNT'] = '7';")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.stdout.split() == [expected, "7"]


def test_the_demo_decides_after_claiming_its_folder_and_before_torch_loads(tmp_path):
    """run_demo checks the overrides first (a bad one: one line, nothing created, no word about
    threads), then claims the folder and removes an earlier run's results (a run stopped half-way
    must not sit beside old metrics), starts METEOR's Java process (closed when the run ends, here
    stopped), then calls ``before_torch`` - with torch not yet loaded."""
    env = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"}
    bad, good = tmp_path / "bad", tmp_path / "good"
    code = f"""
import shutil
import sys
from pathlib import Path
from vcap_toolkit.cli.main import main
from caption import metrics as M
from caption.demo import run_demo
print(main(['demo', '--output', {str(bad)!r}, 'pretrain.no_such_key=1']))
class Stop(Exception):
    pass
started = []
def hook(cfg):
    print('torch' in sys.modules, (Path({str(good)!r}) / '.vcap.json').is_file(), cfg.run.num_workers,
          (Path({str(good)!r}) / 'metrics.json').exists())
    # METEOR's Java process already starting (where there is Java), to be ready by the last stage
    meteor = M._sessions[-1] if M._sessions else None
    print((meteor is not None and meteor.proc.poll() is None) == (shutil.which('java') is not None))
    started.append(meteor)
    raise Stop
for _ in range(2):  # the second run finds the first one's folder, with metrics.json from an earlier run
    try:
        run_demo(Path({str(good)!r}), quick=True, before_torch=hook)
    except Stop:
        print('stopped', M._sessions == [] and all(m.proc.poll() is not None for m in started if m))
    (Path({str(good)!r}) / 'metrics.json').write_text('{{"old": 1}}')
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    # torch not loaded, folder claimed, no workers; an earlier run's metrics gone before anything runs
    assert proc.stdout.split() == ["2"] + ["False", "True", "0", "False", "True", "stopped", "True"] * 2
    assert "unknown config key 'pretrain.no_such_key'" in proc.stderr and not bad.exists()
    assert "OpenMP threads wait actively" not in proc.stderr  # the refused run said nothing of threads


def test_the_demo_gives_the_wait_policy_back_and_config_path_takes_no_overrides(tmp_path):
    """After ``main(['demo', ...])`` returns - here refused after the policy was chosen - a later
    call in the same process (library use) finds OMP_WAIT_POLICY and GOMP_SPINCOUNT as they were;
    and ``--config-path`` with a key=value refuses it in one line instead of ignoring it (both found
    by a hostile test)."""
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")}
    code = f"""
import os
from pathlib import Path
import vcap_toolkit.cli.main as cli
from caption.demo import demo_config
from retrieval_pretrain.foundation.errors import ConfigError
def fake_run_demo(output, before_torch, **_):
    before_torch(demo_config(Path(output) / 'data'))
    print(os.environ['OMP_WAIT_POLICY'], os.environ['GOMP_SPINCOUNT'])
    raise ConfigError('stopped here')
print(os.environ['OMP_WAIT_POLICY'])
cli.run_demo = fake_run_demo
print(cli.main(['demo', '--output', {str(tmp_path / 'd')!r}]), os.environ['OMP_WAIT_POLICY'],
      os.environ.get('GOMP_SPINCOUNT'))
print(cli.main(['demo', '--config-path', 'noequals']))
print(cli.main(['demo', '--config-path', '--quick']), cli.main(['demo', '--config-path', '--seed', '3']))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["PASSIVE", "ACTIVE", "300000", "2", "PASSIVE", "None", "2", "2", "2"]  # back
    assert "stopped here" in proc.stderr
    for given in ("noequals", "--quick", "--seed"):  # a run's settings: refused, not silently ignored
        assert f"vcap demo --config-path prints where the demo's config is and runs nothing; drop '{given}'" in proc.stderr

def test_the_demos_speed_settings_train_the_same_weights_run_after_run(tmp_path):
    """bf16 autocast (where native), channels-last frames, no workers: two stage-1 runs with one
    seed end with bit-identical weights, as `vcap demo` promises for its numbers."""
    spec = demo_data.DemoSpec(num_train=8, num_val=0, num_test=2, frames=8, size=64, seed=4, captions_per_video=2)
    demo_data.generate_dataset(tmp_path / "data", spec, progress=False, workers=1)
    cfg = demo_config(tmp_path / "data", overrides=["pretrain.epochs=2", "pretrain.batch_size=4",
                                                    "pretrain.save_every=0", "run.log_every=1"])
    one, two = (load_file(pretrain(cfg, tmp_path / run) / "model.safetensors") for run in ("a", "b"))
    assert one.keys() == two.keys()
    assert all(torch.equal(one[k], two[k]) for k in one)
    logs = [(tmp_path / run / "log.jsonl").read_text() for run in ("a", "b")]
    losses = [json.loads(line)["loss"] for line in logs[0].splitlines()]
    assert _without_times(logs[0]) == _without_times(logs[1])  # the same loss and temperature at every step
    assert len(losses) == 4 and len(set(losses)) == 4  # 2 epochs of 2 steps, and the loss moved


def _without_times(log: str) -> list[dict]:
    """The log's records without what depends on the clock."""
    clock = ("time", "data_s", "compute_s", "videos_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in clock} for line in log.splitlines()]


def test_a_symbolic_link_in_the_demo_folder_is_refused_before_anything_is_written(tmp_path):
    """``data_quick`` replaced by a link to a user's folder: the demo generated its dataset in there
    (a hostile test's find); now it refuses in one line, the linked folder untouched."""
    from caption.demo.run import DEMO, run_demo
    from retrieval_pretrain.foundation.ownership import claim_folder

    demo, victim = tmp_path / "d", tmp_path / "victim"
    victim.mkdir()
    (victim / "keep.txt").write_text("precious")
    claim_folder(demo, DEMO)  # a demo folder of its own (recorded)
    (demo / "data_quick").symlink_to(victim)
    with pytest.raises(ConfigError, match=r"data_quick is a symbolic link \(to .*victim\); vcap demo writes only inside"):
        run_demo(demo, quick=True)
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt"]
    # one level down: data_quick/videos a link to the user's folder, whose clip-like file the clean-up
    # of stale clips deleted (a hostile test's find); refused, the folder untouched
    (demo / "data_quick").unlink()
    (demo / "data_quick").mkdir()
    (demo / "data_quick" / "videos").symlink_to(victim)
    (victim / "my_holiday_video_0001.mp4").write_text("holiday")
    with pytest.raises(ConfigError, match=r"videos is a symbolic link \(to .*victim\); the demo's videos are written only"):
        run_demo(demo, quick=True)
    assert sorted(p.name for p in victim.iterdir()) == ["keep.txt", "my_holiday_video_0001.mp4"]


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_the_demo_has_malloc_keep_freed_memory_for_reuse():
    """``vcap demo`` asks glibc's malloc to keep freed memory for reuse (``keep_freed_memory``): blocks
    of 1 to 30 MB, each allocated, written and freed in turn - as a training step's activations are -
    fault in a fraction of the pages they do with glibc's defaults, which map each new larger block
    afresh (119,071 vs 9,217 page faults, measured); what is computed stays the same."""
    code = """
import resource, sys
from pathlib import Path
from caption.demo import demo_config
from vcap_toolkit.cli.main import _demo_settings
if sys.argv[1] == 'demo':
    _demo_settings(demo_config(Path('unused')))
import torch
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
total = 0
for mb in range(1, 31):
    t = torch.empty(mb << 20, dtype=torch.uint8).fill_(1)
    total += int(t[::4096].sum())
    del t
print(total, resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    faults = {}
    for how in ("plain", "demo"):
        proc = subprocess.run([sys.executable, "-c", code, how], capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr
        total, faults[how] = map(int, proc.stdout.split())
        assert total == sum(mb * 256 for mb in range(1, 31))  # every block written: the same bytes either way
    assert faults["demo"] * 5 < faults["plain"], faults
    from retrieval_pretrain.foundation.machine import keep_freed_memory  # deferred: this test's own
    with pytest.raises(ValueError, match="0 to 2"):  # C ints: 4 GB would wrap to 0 (a hostile test's find)
        keep_freed_memory(trim_threshold=4 << 30)
