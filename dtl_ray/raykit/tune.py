"""Ray Tune plumbing of the fine-tune search: trial concurrency, a progress line per trial,
and keeping credentials out of Ray's logs."""

from __future__ import annotations

import contextlib

from dtl_ray import console

__all__ = ["concurrency", "trial_lines", "credentials_kept_out_of_ray_logs",
           "sweep_placement_groups"]


def concurrency(max_concurrent_trials: int) -> int | None:
    """`max_concurrent_trials` if set (> 0), else None: no cap. Tune then queues every trial
    with its resource request, runs what fits, and on an autoscaling cluster the pending
    requests are what makes the autoscaler add nodes (a cap read from the cluster's resources
    now would hold a cluster that starts with no GPU workers at one trial)."""
    return max_concurrent_trials if max_concurrent_trials > 0 else None


def trial_lines(total: int, settings: list[dict]):
    import ray.tune

    class TrialLines(ray.tune.Callback):
        """One progress line per finished (or failed) trial (in the run's log when the run
        holds the console), and a bar over the trials on the terminal."""

        def __init__(self) -> None:
            self.done = 0
            self.bar = None

        def __getstate__(self) -> dict:  # (Tune pickles its callbacks: not the bar)
            return {**self.__dict__, "bar": None}

        def setup(self, **info) -> None:  # (in the driver, when the search starts)
            self.bar = console.bar(total, "finetune trials", "trial")

        def _step(self) -> None:
            if self.bar is None:
                self.setup()
            self.done += 1
            self.bar.update(1)
            if self.done >= total:
                self.bar.close()

        def on_trial_complete(self, iteration, trials, trial, **info):
            self._step()
            r, c = trial.last_result or {}, trial.config
            console.detail(f"[finetune] trial {self.done}/{total} {trial.trial_id}: cell "
                           f"{c['cell']} setting {settings[c['setting']]}  "
                           f"best val acc {r.get('best_val_accuracy', 0):.3f} "
                           f"(epoch {r.get('best_epoch')}, {r.get('epoch')} run)")

        def on_trial_error(self, iteration, trials, trial, **info):
            self._step()
            console.detail(f"[finetune] trial {self.done}/{total} {trial.trial_id} FAILED "
                           f"(see {trial.local_path})")

    return TrialLines()


SECRETS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN",
           "AWS_SECURITY_TOKEN"}


@contextlib.contextmanager
def credentials_kept_out_of_ray_logs():
    """While the search runs: Ray Tune copies AWS credentials from the driver's environment
    into every trial's runtime_env, and Ray's runtime-env agent logs runtime envs verbatim
    (INFO), so the secret key would land in `<ray session>/logs/runtime_env_agent.log`.
    Trials get credentials from their node instead: the local raylet's environment, or the
    instance role on a cluster. Ray's list is restored afterwards (other Tune users in this
    process are not changed); a Ray without that list gets a warning, not a crash."""
    try:
        from ray.tune.execution import class_cache

        before = class_cache.ENV_VARS_TO_PROPAGATE
    except (ImportError, AttributeError):
        console.say("[dtl-ray] warning: this Ray's Tune has no ENV_VARS_TO_PROPAGATE: AWS "
                    "credentials in the driver's environment may reach Ray's runtime-env logs")
        yield
        return
    class_cache.ENV_VARS_TO_PROPAGATE = set(before) - SECRETS
    try:
        yield
    finally:
        class_cache.ENV_VARS_TO_PROPAGATE = before


def sweep_placement_groups() -> list[str]:
    """Removes the placement groups this job created that are still CREATED once its search
    has returned; returns their ids.

    A trial on a TorchTrainer owns its Train run's controller; when ASHA stops the trial,
    Tune kills the trial's actor and the controller dies without removing its run's placement
    group, which then holds its nodes' GPUs and CPUs (and keeps an autoscaler from removing
    them) until the driver ends; only Train's best-effort cleaner would remove it (ray#54305,
    #58515). Once the search has returned no trial or Train run of this job is alive, and
    Ray Data's actor pools hold no placement group: whatever is still CREATED is left over.
    """
    import ray
    from ray.util.placement_group import PlacementGroup, remove_placement_group
    from ray.util.state import list_placement_groups

    job = ray.get_runtime_context().get_job_id()
    left = list_placement_groups(filters=[("creator_job_id", "=", job),
                                          ("state", "=", "CREATED")],
                                 detail=True, raise_on_missing_output=False)
    removed = []
    for pg in left:
        if pg.is_detached:
            continue
        try:
            remove_placement_group(PlacementGroup(
                ray.PlacementGroupID(bytes.fromhex(pg.placement_group_id))))
        except Exception as e:  # removed meanwhile (Train's cleaner won the race)
            console.detail(f"[finetune] placement group {pg.placement_group_id}: {e}")
            continue
        removed.append(pg.placement_group_id)
    return removed
