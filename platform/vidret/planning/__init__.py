"""Resource planning before a job starts, and the cluster guards; pure (no Ray import).

:mod:`~vidret.planning.fit` holds the types and checks, :mod:`~vidret.planning.jobs` what each job asks
for, :mod:`~vidret.planning.paths` the local-path guard. The Ray side (describing the live cluster,
waiting for autoscaler nodes, the pending watchdog) is :mod:`vidret.watchdog`.
"""

from vidret.planning.fit import (
    NODE_ID_LABEL,
    Ask,
    Cluster,
    Node,
    Phase,
    Plan,
    PlanError,
    check_off_head,
    check_phases,
    fraction_fits,
    remote_args,
)
from vidret.planning.jobs import JOBS, plan_job
from vidret.planning.paths import PathUse, check_shared_paths, job_paths

__all__ = [
    "JOBS",
    "NODE_ID_LABEL",
    "Ask",
    "Cluster",
    "Node",
    "PathUse",
    "Phase",
    "Plan",
    "PlanError",
    "check_off_head",
    "check_phases",
    "check_shared_paths",
    "fraction_fits",
    "job_paths",
    "plan_job",
    "remote_args",
]
