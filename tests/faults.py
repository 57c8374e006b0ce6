"""Faults the end-to-end runs inject: broken image files, and a Train worker killed mid-run."""

import io
import json
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


def registered_checkpoint(stage_dir):
    """Whether the Train run's controller has registered a checkpoint (a worker writes the
    checkpoint's files first: killed before the registration, it restarts from scratch)."""
    path = os.path.join(stage_dir, "train", "checkpoint_manager_snapshot.json")
    try:
        with open(path) as f:
            return bool(json.load(f).get("checkpoint_results"))
    except (OSError, ValueError):  # not there yet, or being written
        return False


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


BOMB_PIXELS = 5000 * 4000


def add_a_bomb_and_a_bad_name(root):
    """In source train/circle: a PNG of BOMB_PIXELS pixels in a small file (rejected under a
    lower `data.max_image_pixels`), a file whose name is not UTF-8, and a macOS metadata file
    (`._x.png`, not an image: not listed at all).

    Returns the rejected names as the rejected table shows them."""
    folder = root / "source" / "train" / "circle"
    Image.new("RGB", (5000, 4000)).save(folder / "bomb.png")
    with open(bytes(folder) + b"/caf\xe9.png", "wb") as f:
        f.write(_png(np.full((32, 32, 3), 90, np.uint8)))
    (folder / "._gray.png").write_bytes(b"\x00\x05\x16\x07 AppleDouble")
    return ["bomb.png", "caf\\xe9.png"]


def _alive(class_name):
    """A function listing the ALIVE actors of `class_name` in this session's Ray (found by its
    address: another Ray may run on the same machine)."""
    import ray
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address
    return lambda: list_actors(address=address, filters=[
        ("class_name", "=", class_name), ("state", "=", "ALIVE")])


def _stage_done(stage_dir):
    return os.path.exists(os.path.join(stage_dir, "_DONE.json"))


def _killer_thread(body):
    """Runs body(killed) in a daemon thread. Returns (thread, killed): what the body recorded,
    or `error`, which the caller re-raises (a thread would swallow it)."""
    killed = {}

    def run():
        try:
            body(killed)
        except Exception as e:
            killed["error"] = e

    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t, killed


def kill_a_train_worker_after_first_checkpoint(stage_dir):
    """Starts a thread that, once the stage's Train run (the pipeline's first) has a
    checkpoint, SIGKILLs one of its `RayTrainWorker`s in this session's Ray.

    Returns (thread, result dict: `pid` of the victim and `stage_done_at_kill`, or `error`)."""
    alive_workers = _alive("RayTrainWorker")

    def body(killed):
        # this stage's workers: the first Train workers to come up (the stage's Train run is
        # the pipeline's first); looked up before the race, so the kill follows the first
        # checkpoint within a file-system poll, not a state-API call
        actors = wait_for(alive_workers, every=0.05)
        wait_for(lambda: registered_checkpoint(stage_dir), every=0.02)
        killed["pid"] = actors[0].pid
        os.kill(actors[0].pid, signal.SIGKILL)
        # the victim must have been this stage's worker: the stage was still running
        killed["stage_done_at_kill"] = _stage_done(stage_dir)

    return _killer_thread(body)


def _kill_an_actor_when(class_name, ready, stage_dir, begun=None, describe=None):
    """Starts a thread that SIGKILLs every ALIVE actor of `class_name` in this session's Ray
    once `ready()` is true. Returns (thread, result dict: `pids` of the victims,
    `stage_done_at_kill` and what `describe()` saw right after the kill, or `error`).

    The actors are looked up by a second thread from `begun()` on (default: the stage's
    folder exists): a state-API call takes seconds under load, which short trials could
    outlive (a reused actor then runs the next one), so the kill follows `ready` within a
    file-system poll, with the last lookup's actors; when none of them is left, with the next
    lookup's."""
    alive = _alive(class_name)
    begun = begun or (lambda: os.path.isdir(stage_dir))

    def body(killed):
        seen, stop, failed = [], threading.Event(), []

        def look():
            while not stop.is_set():
                if begun():
                    try:
                        seen[:] = [alive()]  # a new list per lookup
                    except Exception as e:  # noqa: BLE001 (re-raised by body)
                        failed.append(e)
                        return
                stop.wait(0.3)

        looker = threading.Thread(target=look, daemon=True)
        looker.start()
        try:
            wait_for(lambda: ready() or failed, timeout=900, every=0.02)
            killed["pids"], tried = [], None
            deadline = time.time() + 120
            while not (killed["pids"] or failed or _stage_done(stage_dir)):
                if seen and seen[0] is not tried:
                    tried = seen[0]
                    for a in tried:
                        try:
                            os.kill(a.pid, signal.SIGKILL)
                            killed["pids"].append(a.pid)
                        except ProcessLookupError:  # it ended since the lookup
                            pass
                if time.time() > deadline:
                    raise TimeoutError(f"no {class_name} actor alive to kill")
                time.sleep(0.02)
        finally:
            stop.set()
        if failed:
            raise failed[0]
        killed["stage_done_at_kill"] = _stage_done(stage_dir)
        killed["seen"] = describe() if describe else None

    return _killer_thread(body)


def kill_a_trial_after_its_first_epoch(stage_dir):
    """SIGKILLs the fine-tuning trials' processes (Tune's `ImplicitFunc` actors running
    `trial_fn`) once a trial has saved its first epoch's progress."""
    progress = os.path.join(stage_dir, "progress")

    def saved():  # the progress files there are, with their mtimes (for a failure's message)
        return {n: os.path.getmtime(os.path.join(progress, n)) for n in os.listdir(progress)
                if n.endswith(".pt")} if os.path.isdir(progress) else {}

    return _kill_an_actor_when("ImplicitFunc", saved, stage_dir,
                               describe=lambda: {"at": time.time(), "files": saved()})


def kill_a_scoring_actor(stage_dir, run_dir):
    """SIGKILLs the scoring actors (Ray Data's actor-pool workers running `Scorer`) once the
    score stage has started (the discriminate stage is done)."""
    def started():
        return os.path.exists(os.path.join(run_dir, "discriminate", "_DONE.json"))

    return _kill_an_actor_when("MapWorker(MapBatches(Scorer))", started, stage_dir,
                               begun=started)
