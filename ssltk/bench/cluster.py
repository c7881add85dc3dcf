"""Running a benchmark's groups as cluster jobs through submitit (Slurm, or local processes).

``executor = "slurm"`` submits one job per group (a pretraining run and its finetuning cells)
with the ``[slurm]`` table's parameters (``partition``, ``timeout_min``, ``gpus_per_node``,
``cpus_per_task``, ``mem_gb``...); ``executor = "submitit_local"`` runs the same jobs as local
processes (what the tests use). Jobs append to the same results.jsonl under a file lock; a
re-run after a failure resubmits only the groups with unfinished cells. Each job loads the
plugins the submitting process loaded (the disabled ones stay disabled).
"""

from __future__ import annotations

from pathlib import Path

from ssltk.bench.groups import Group, run_groups
from ssltk.errors import ConfigError, SsltkError

LOCAL_TIMEOUT_MIN = 24 * 60
"""Wall-clock limit of a ``submitit_local`` job unless ``[slurm] timeout_min`` sets one."""
_NATIVE = ("timeout_min", "gpus_per_node", "cpus_per_task", "mem_gb", "nodes", "tasks_per_node")
"""submitit parameters taken as they are; any other ``[slurm]`` key gets a ``slurm_`` prefix."""


def _executor(config, root: Path):
    try:
        import submitit
    except ImportError:
        raise ConfigError(f"executor = \"{config.executor}\" needs submitit: "
                          "pip install 'ssltk[cluster]'") from None
    folder = root / "submitit"
    if config.executor == "submitit_local":
        executor = submitit.LocalExecutor(folder=folder)
        # submitit's local default is 2 minutes, and its timeout signal (sent 30 s before) raises
        # inside whatever the job is doing: a busy machine then "breaks" plugins mid-import.
        params = {"timeout_min": LOCAL_TIMEOUT_MIN}
        params |= {k: v for k, v in config.slurm.items() if k in ("timeout_min", "gpus_per_node")}
    else:
        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params = {k if k in _NATIVE else f"slurm_{k}": v for k, v in config.slurm.items()}
    executor.update_parameters(name=f"ssltk-{config.name}", **params)
    return executor


def _job(group: Group, root: Path, benchmark: str, config_hash: str,
         disabled: frozenset[str]) -> int:
    import torch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return run_groups([group], root, benchmark, config_hash, device, disabled)


def run_on_submitit(groups: list[Group], config, root: Path, config_hash: str,
                    disabled: frozenset[str] = frozenset()) -> None:
    """Submit one job per group, wait for all, and fail with the first job error."""
    executor = _executor(config, root)
    jobs = [executor.submit(_job, g, root.resolve(), config.name, config_hash, disabled)
            for g in groups]
    errors = []
    for job in jobs:
        try:
            job.result()
        except Exception as exc:  # the job's own exception, re-raised by submitit
            errors.append(f"job {job.job_id}: {str(exc).strip().splitlines()[-1]}")
    if errors:
        raise SsltkError(f"{len(errors)} cluster job(s) failed ({errors[0]}); logs in "
                          f"{root / 'submitit'}; re-run to resume")
