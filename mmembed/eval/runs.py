"""Helpers for studies that train through the CLI: run command chains in parallel and read back
what the runs logged (TensorBoard scalars).

Used by ``scripts/study_*.py`` and ``scripts/bench_*.py``; nothing here imports Lightning.
"""

from __future__ import annotations

import glob
import os
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["Job", "latest_version", "read_scalars", "run_jobs"]


@dataclass
class Job:
    """Commands run one after the other in ``folder`` (output in ``folder/fit.log``).

    Attributes:
        name: What the progress lines call it.
        folder: The run's folder; ``done`` (the wall time in seconds) is written there on success.
        commands: Argument lists, run in order; the job stops at the first failure.
        check: Optional test of the log text; False marks the job failed even on exit 0 (a run
            stopped by a signal can exit 0).
    """

    name: str
    folder: str
    commands: list[list[str]]
    check: Callable[[str], bool] | None = field(default=None, repr=False)

    @property
    def done(self) -> bool:
        """Whether an earlier call finished this job."""
        return os.path.exists(os.path.join(self.folder, "done"))


def run_jobs(jobs: Sequence[Job], parallel: int = 1, threads: int | None = None) -> None:
    """Run jobs, ``parallel`` at a time, each with ``threads`` (default: cores / parallel) threads.

    Args:
        jobs: The jobs; each writes ``folder/fit.log`` and, on success, ``folder/done``.
        parallel: Jobs at once.
        threads: ``OMP_NUM_THREADS`` / ``MKL_NUM_THREADS`` of each job.

    Raises:
        RuntimeError: Naming every failed job and its log, after all jobs have ended.
    """
    parallel = max(1, parallel)
    threads = threads or max(1, (os.cpu_count() or 1) // parallel)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    pending = list(jobs)
    running: list[dict] = []
    failed: list[str] = []
    total, finished = len(pending), 0

    def start(state: dict) -> None:
        cmd = state["job"].commands[state["step"]]
        state["proc"] = subprocess.Popen(cmd, stdout=state["log"], stderr=subprocess.STDOUT, env=env)

    while pending or running:
        while pending and len(running) < parallel:
            job = pending.pop(0)
            os.makedirs(job.folder, exist_ok=True)
            log = open(os.path.join(job.folder, "fit.log"), "w")  # noqa: SIM115 (closed when the job ends)
            state = {"job": job, "log": log, "step": 0, "start": time.perf_counter()}
            print(f"[{finished + len(running) + 1}/{total}] {job.name} ...", flush=True)
            start(state)
            running.append(state)
        time.sleep(0.5)
        for state in [s for s in running if s["proc"].poll() is not None]:
            job, code = state["job"], state["proc"].returncode
            if code == 0 and state["step"] + 1 < len(job.commands):
                state["step"] += 1
                start(state)
                continue
            running.remove(state)
            state["log"].close()
            finished += 1
            with open(os.path.join(job.folder, "fit.log")) as f:
                ok = code == 0 and (job.check is None or job.check(f.read()))
            if not ok:
                failed.append(f"{job.name}: exit {code}, see {job.folder}/fit.log")
                print(f"  {job.name} FAILED (exit {code}): see {job.folder}/fit.log", flush=True)
                continue
            seconds = time.perf_counter() - state["start"]
            with open(os.path.join(job.folder, "done"), "w") as f:
                f.write(f"{seconds:.1f}\n")
            print(f"  {job.name}: done in {seconds:.0f} s", flush=True)
    if failed:
        raise RuntimeError("jobs failed:\n" + "\n".join(failed))


def latest_version(save_dir: str, name: str = "*") -> str:
    """The newest ``<save_dir>/<name>/version_<n>`` folder of a Lightning logger.

    Raises:
        FileNotFoundError: If there is none.
    """
    versions = glob.glob(os.path.join(save_dir, name, "version_*"))
    if not versions:
        raise FileNotFoundError(f"no {name}/version_* folder under {save_dir}: did the run start?")
    return max(versions, key=lambda v: int(v.rsplit("_", 1)[1]))


def read_scalars(version_dir: str, tags: Sequence[str] | None = None) -> dict[str, list[float]]:
    """Scalars of one TensorBoard run, each tag's values in step order.

    Args:
        version_dir: A logger version folder (holding ``events.out.tfevents.*``).
        tags: Tags to read (None: all).

    Returns:
        ``{tag: [values]}`` for every requested tag that was logged.
    """
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(version_dir, size_guidance={"scalars": 0})
    acc.Reload()
    logged = set(acc.Tags()["scalars"])
    wanted = logged if tags is None else [t for t in tags if t in logged]
    return {t: [e.value for e in sorted(acc.Scalars(t), key=lambda e: e.step)] for t in wanted}
