"""The distributed map: rows decoded and mapped by a Ray Data actor pool of a callable class,
sized to what the cluster can hold. Knows nothing of the models it runs.
"""

from __future__ import annotations

from dtl_ray.config import ScalingConfig, ScoreConfig
from dtl_ray.data import decode, readers
from dtl_ray.raykit import capacity

__all__ = ["actor_pool", "actor_map"]


def actor_pool(requested: int, cpus_per_actor: int, use_gpu: bool,
               spare_cpus: int = 0) -> int | None:
    """Scoring actors: `requested`, or the most the cluster can hold (its nodes and what its
    autoscaler can add): one per GPU, or its CPUs less `spare_cpus` kept for upstream read
    and decode tasks; None when an autoscaler may add nodes without saying how many (the
    pool then grows as far as Ray Data and the autoscaler take it)."""
    if requested > 0:
        return requested
    most = capacity.most("GPU" if use_gpu else "CPU")
    if most is None:
        return None
    if use_gpu:
        return max(1, most)
    return max(1, (most - spare_cpus) // max(cpus_per_actor, 1))


def actor_map(rows, fn: type, fn_kwargs: dict, score: ScoreConfig, scaling: ScalingConfig,
              image_size, max_pixels: int = decode.DEFAULT_MAX_PIXELS):
    """The lazy Ray Dataset of `rows` decoded and mapped by an actor pool of `fn(**fn_kwargs)`
    (a callable class that loads its models once: `method.scoring.Scorer`), in batches of
    `score.batch_size`, `score.actors` actors (0: as many as the cluster holds).

    On CPU, the actors read and decode image-folder rows themselves (`fn` decodes a batch
    without an `image` column): no image bytes go through the object store and every CPU can
    hold an actor. On GPU, CPU tasks decode and the GPU actors only run the models. Packed
    rows are read and decoded by tasks.
    """
    import ray.data

    use_gpu = scaling.use_gpu
    packed = "shard" in rows and bool((rows["shard"] != "").any())
    # on CPU, image-folder rows are read and decoded by the actors themselves; packed rows
    # (and all rows on GPU) by upstream tasks, which keep a CPU free for them
    in_actor = not use_gpu and not packed
    size = actor_pool(score.actors, scaling.cpus_per_worker, use_gpu,
                      spare_cpus=0 if in_actor else 1)
    # blocks small enough that every actor gets several (balance), at most 512 rows
    block = int(min(512, max(score.batch_size, -(-len(rows) // (4 * (size or 8))))))
    parts = [ds for _, ds in readers.dataset_parts(rows, image_size, block,
                                                 decode_files=not in_actor,
                                                 max_pixels=max_pixels)]
    ds = parts[0] if len(parts) == 1 else parts[0].union(*parts[1:])
    # a fixed pool when asked for; else a range: it grows while blocks wait (Ray Data asks the
    # autoscaler for the actors' resources) up to what the cluster can hold
    compute = (ray.data.ActorPoolStrategy(size=size) if score.actors > 0 else
               ray.data.ActorPoolStrategy(min_size=1, max_size=size))  # size None: no cap
    return ds.map_batches(
        fn,
        fn_constructor_kwargs=fn_kwargs,
        compute=compute,
        batch_size=score.batch_size,
        batch_format="numpy",
        num_cpus=scaling.cpus_per_worker,
        num_gpus=1 if use_gpu else 0,
        # a task that raised a transient read fault (`readers.configure_context`) or lost its
        # actor is tried again, a bounded number of times
        max_task_retries=decode.TASK_RETRIES["max_retries"],
    )
