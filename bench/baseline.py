"""The one-process-per-job baseline (run as a subprocess).

A parent with torch imported forks one process per image; each child loads the model file the
plain way (build the architecture in the shape the file was exported in, torch.load, load_state_dict),
classifies its one image with one thread, and exits. As many run at once as there are cores. Prints images/s as JSON.
`make bench` runs the same (`run`) from its lab process (bench/lab.py), a parent with torch imported.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import time
from pathlib import Path

import torch
import torchvision

from bench.images import photos
from workers import folding
from workers.handlers import get_handler
from workers.store import ModelStore


def classify_one(store: Path, model: str, image: bytes, results: mp.Queue) -> None:
    torch.set_num_threads(1)
    spec = ModelStore(store).get(model)
    module = torchvision.models.get_model(spec.architecture, weights=None)
    if spec.folded_batchnorm:
        folding.fold_structure(module)  # the shape the file was exported in (workers/folding.py)
    module.load_state_dict(torch.load(spec.weights_path, weights_only=True, map_location="cpu"))
    module.eval()
    handler = get_handler(spec)
    handler.setup(torch.device("cpu"))  # preprocessing parameters; the module is replaced below
    handler.module = module  # type: ignore[attr-defined]
    results.put(handler(image, "image/jpeg")["predictions"][0]["index"])


def run(store: Path, model: str, images: list[bytes]) -> dict[str, object]:
    """Classify `images`, one forked process each, as many at once as there are cores."""
    cores = len(os.sched_getaffinity(0))
    ctx = mp.get_context("fork")
    results: mp.Queue = ctx.Queue()
    running: list[mp.process.BaseProcess] = []
    started = time.perf_counter()
    for image in images:
        while len(running) >= cores:
            running[0].join()
            running = [p for p in running if p.is_alive()]
        proc = ctx.Process(target=classify_one, args=(store, model, image, results))
        proc.start()
        running.append(proc)
    labels = [results.get(timeout=600) for _ in images]
    for proc in running:
        proc.join()
    elapsed = time.perf_counter() - started
    return {"images_per_s": len(images) / elapsed, "processes": cores, "labels": labels}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store", type=Path)
    parser.add_argument("model")
    parser.add_argument("--images", type=int, default=8)
    args = parser.parse_args()
    print(json.dumps(run(args.store, args.model, photos(args.images))))


if __name__ == "__main__":
    main()
