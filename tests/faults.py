"""Faults the end-to-end runs inject: broken image files, and a Train worker killed mid-run."""

import io
import os
import signal
import threading
import time

import numpy as np
from PIL import Image


def wait_for(predicate, timeout=300, every=0.2):
    """predicate()'s first truthy value; TimeoutError after `timeout` seconds."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not reached")


def train_checkpoints(stage_dir):
    """The checkpoints a stage's Train run (named `train`) has written so far."""
    train = os.path.join(stage_dir, "train")
    return [d for d in os.listdir(train) if d.startswith("checkpoint_")] if os.path.isdir(
        train) else []


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def add_bad_images(root, n_bad):
    """Undecodable files plus convertible odd formats, in source train/circle.

    Returns (sorted bad names, sorted odd names)."""
    folder = root / "source" / "train" / "circle"
    bad = {"zero.png": b"", "text.png": b"this is not a png", "cut.png": _png(np.zeros(
        (32, 32, 3), np.uint8))[:50], "cut.jpg": b"\xff\xd8\xff\xe0" + b"\0" * 20}
    for i in range(n_bad - len(bad)):
        bad[f"junk{i}.png"] = b"\x89PNG junk"
    for name, blob in list(bad.items())[:n_bad]:
        (folder / name).write_bytes(blob)
    odd = {"gray.png": Image.new("L", (32, 32), 90), "rgba.png": Image.new("RGBA", (40, 30)),
           "pal.png": Image.new("P", (32, 32), 3),
           "deep.png": Image.fromarray(np.full((32, 32), 50000, np.uint16)),
           "huge.png": Image.new("RGB", (4000, 3000), (10, 200, 30))}
    for name, im in odd.items():
        im.save(folder / name)
    return sorted(list(bad)[:n_bad]), sorted(odd)


def kill_a_train_worker_after_first_checkpoint(stage_dir):
    """Starts a thread that, once the stage's Train run has a checkpoint, SIGKILLs a live
    `RayTrainWorker` of this session's Ray. Returns (thread, result dict: `pid` of the victim,
    or `error`, which the caller re-raises: a thread would swallow it)."""
    import ray
    from ray.util.state import list_actors

    # this session's cluster by its address: another Ray may run on the same machine
    address = ray.get_runtime_context().gcs_address
    killed = {}

    def killer():
        try:
            wait_for(lambda: train_checkpoints(stage_dir))
            actors = wait_for(lambda: list_actors(address=address, filters=[
                ("class_name", "=", "RayTrainWorker"), ("state", "=", "ALIVE")]))
            killed["pid"] = actors[0].pid
            os.kill(actors[0].pid, signal.SIGKILL)
        except Exception as e:
            killed["error"] = e

    t = threading.Thread(target=killer, daemon=True)
    t.start()
    return t, killed
