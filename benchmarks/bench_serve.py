"""``vcap serve`` timings: page load, one caption's latency, and 20 concurrent caption requests.

    python -m benchmarks.bench_serve [--caption-model RUN2/model --index IDX --video CLIP]
                                     [--requests 20] [--repeat 5] [--device cpu]

Without ``--caption-model`` it first builds the tiny models tests/test_serve.py uses (9 demo clips,
stage 1 and a caption model trained for seconds, an index of the clips), so the numbers are the
server's overhead around a tiny model; give real models for real latencies. The server runs in
this process on a free loopback port (waitress threads, as ``vcap serve``), and is driven over HTTP:

1. Page load: headless Chromium (Playwright, /usr/bin/chromium) from navigation until the page
   has shown what the server loaded (``/api/info`` answered); median of ``--repeat`` fresh pages.
   Without Playwright: the time to GET ``/`` and ``/api/info`` with urllib.
2. Caption latency: one clip uploaded and captioned (beam as the model's default), median of
   ``--repeat`` requests one after another, with the server's own model-only time beside it.
3. Concurrency: ``--requests`` uploads at once from as many threads; the wall time until the last
   caption came back (inference takes turns on one lock, so about ``requests`` x latency).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]


def build_tiny(root: Path) -> tuple[Path, Path, Path]:
    """The tiny models of tests/test_serve.py: ``(caption model, index, a clip)``."""
    import torch

    from caption.config import load
    from caption.demo import CONFIG_PATH
    from caption.demo import data as demo_data
    from caption.train import train as train_captions
    from retrieval_pretrain.stage1.extract import extract_features
    from retrieval_pretrain.stage1.train import train as train_retrieval
    from vcap_toolkit.jobs.search import build_index

    s1 = ["video.num_frames=4", "pretrain.batch_size=8", "pretrain.epochs=10", "run.num_workers=0",
          "clip.custom.vision_cfg={layers: 1, width: 64, head_width: 32, patch_size: 8, image_size: 64}",
          "clip.custom.text_cfg.layers=1", "pretrain.head_layers=1", "pretrain.save_every=0"]
    s2 = ["caption.hidden_size=64", "caption.ffn_size=128", "caption.dropout=0.0", "caption.batch_size=16",
          "caption.select_by=last", "decode.num_beams=1", "run.log_every=5", "caption.vocab_size=200",
          "caption.epochs=10", "caption.lr=1e-2"]
    spec = demo_data.DemoSpec(num_train=8, num_val=0, num_test=1, frames=8, size=64, seed=11, captions_per_video=2)
    ann = demo_data.generate_dataset(root / "data", spec, progress=False, workers=1)
    data = [f"data.annotations={ann}", f"data.videos={ann.parent}"]
    cfg = load(CONFIG_PATH, data + s1)
    stage1 = train_retrieval(cfg, root / "s1")
    extract_features(stage1, cfg, root / "feats")
    model = train_captions(load(CONFIG_PATH, data + s1 + s2), root / "feats", root / "xe")
    videos = sorted((ann.parent / "videos").glob("*.mp4"))
    build_index(stage1, videos, root / "idx", torch.device("cpu"), batch_size=9, num_workers=0)
    return model, root / "idx", videos[0]


def upload(url: str, video: Path) -> dict:
    """POST one clip to /api/caption; the JSON answer (raises on an error status)."""
    boundary = uuid.uuid4().hex
    body = (f'--{boundary}\r\nContent-Disposition: form-data; name="video"; filename="{video.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n").encode() + video.read_bytes() \
        + f"\r\n--{boundary}--\r\n".encode()
    req = urllib.request.Request(f"{url}/api/caption", data=body,
                                 headers={"Content-Type": f"multipart/form-data; boundary={boundary}"})
    with urllib.request.urlopen(req, timeout=600) as r:
        return json.loads(r.read())


def page_load(url: str, repeat: int) -> tuple[str, list[float]]:
    """How the page load was measured, and the times."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        sync_playwright = None
    if sync_playwright is None or not Path(CHROMIUM).is_file():
        times = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            urllib.request.urlopen(url + "/").read()
            urllib.request.urlopen(url + "/api/info").read()
            times.append(time.perf_counter() - t0)
        return "urllib GET / + /api/info", times
    times = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        for _ in range(repeat):
            page = browser.new_page()
            t0 = time.perf_counter()
            page.goto(url + "/")
            page.wait_for_selector("html[data-ready='1']")
            times.append(time.perf_counter() - t0)
            page.close()
        browser.close()
    return "headless Chromium, navigation to models shown", times


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--caption-model", type=Path, default=None)
    ap.add_argument("--index", type=Path, default=None)
    ap.add_argument("--video", type=Path, default=None, help="the clip to caption (default: one of the index's)")
    ap.add_argument("--requests", type=int, default=20)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args(argv)

    import logging

    import torch

    from vcap_toolkit.web.models import ServeModels, path_guard
    from vcap_toolkit.web.serve import create_app, make_server, stop_server

    logging.getLogger("waitress.queue").setLevel(logging.ERROR)  # "Task queue depth is N": expected here
    with tempfile.TemporaryDirectory(prefix="bench-serve-") as tmp:
        model, index, video = args.caption_model, args.index, args.video
        if model is None:
            print("building the tiny models of tests/test_serve.py ...", file=sys.stderr)
            model, index, video = build_tiny(Path(tmp))
        t0 = time.perf_counter()
        models = ServeModels.load(model, None, index, device=args.device)
        load_s = time.perf_counter() - t0
        video = video or Path(models.index_paths[0])
        server = make_server(create_app(models, path_guard(models, None)), "127.0.0.1", 0)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        url = f"http://127.0.0.1:{server.effective_port}"
        try:
            how, loads = page_load(url, args.repeat)
            upload(url, video)  # warm-up
            answers, latencies = [], []
            for _ in range(args.repeat):
                t0 = time.perf_counter()
                answers.append(upload(url, video))
                latencies.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            with ThreadPoolExecutor(args.requests) as pool:
                done = list(pool.map(lambda _: upload(url, video), range(args.requests)))
            together = time.perf_counter() - t0
        finally:
            stop_server(server)
            thread.join(10)
    assert all(d["caption"] == answers[0]["caption"] for d in done)
    print(f"device {args.device}, torch threads {torch.get_num_threads()}, CPUs {os.cpu_count()}; "
          f"models loaded in {load_s:.2f} s; clip {video.name}")
    print(f"page load ({how}): median {statistics.median(loads):.3f} s over {len(loads)}")
    print(f"caption latency, one clip, beam {answers[0]['beam']}: median {statistics.median(latencies):.3f} s over "
          f"{len(latencies)} (model {statistics.median(a['seconds']['model'] for a in answers):.3f} s)")
    print(f"{args.requests} concurrent caption requests: {together:.2f} s in all "
          f"({together / args.requests:.3f} s a request), all {len(done)} answered")


if __name__ == "__main__":
    main()
