"""The local Slurm test cluster (``scripts/slurm/cluster.sh``) from Python and pytest.

``ensure_cluster()`` brings the 4-node cluster up if this process can (root, Debian's apt-get
or Slurm already installed) and returns a :class:`SlurmCluster`; when it cannot, it returns a
string saying why, which tests turn into a skip. The ``slurm_cluster`` fixture does exactly
that; use it from a test module with::

    from lift_dist.testing.slurm_cluster import slurm_cluster  # noqa: F401  (pytest fixture)

Environment: ``LIFT_DIST_SLURM=0`` skips every Slurm test, ``LIFT_DIST_SLURM=1`` makes an
unavailable cluster an error instead of a skip (for CI that must exercise Slurm), unset means
"use it when possible". ``LIFT_DIST_SLURM_STATE`` moves the state dir (default
/var/lib/lift-dist-slurm), as for cluster.sh.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

ENV_SWITCH = "LIFT_DIST_SLURM"
REPO_ROOT = Path(__file__).resolve().parents[2]
CLUSTER_SCRIPT = REPO_ROOT / "scripts" / "slurm" / "cluster.sh"
STATE_DIR = Path(os.environ.get("LIFT_DIST_SLURM_STATE", "/var/lib/lift-dist-slurm"))
SLURM_CONF = STATE_DIR / "etc" / "slurm.conf"
NODES = ("n1", "n2", "n3", "n4")
UP_TIMEOUT_S = 600  # first run installs packages with apt-get
_OK_NODE_STATES = {"idle", "mixed", "allocated", "completing"}


@dataclasses.dataclass(frozen=True)
class SlurmCluster:
    """What tests need to know about the running cluster."""

    partition: str  # default partition, nodes n1..n4
    preempt_partition: str  # PriorityTier 2: its jobs requeue `partition` jobs (with --signal)
    nodes: tuple[str, ...]  # each resolves to 127.0.0.1
    cpus_per_node: int
    slurm_conf: str  # also exported as SLURM_CONF by ensure_cluster()
    state_dir: str  # logs under <state_dir>/log
    script: str  # scripts/slurm/cluster.sh


class SlurmClusterError(RuntimeError):
    """The cluster should have come up here but did not (a real failure, not a skip)."""


def _switch() -> str:
    value = os.environ.get(ENV_SWITCH, "").strip().lower()
    if value in ("0", "false", "no", "off"):
        return "off"
    if value in ("1", "true", "yes", "on", "required"):
        return "required"
    return "auto"


def _slurm_env() -> dict[str, str]:
    return {**os.environ, "SLURM_CONF": str(SLURM_CONF)}


def _node_states() -> dict[str, str] | None:
    """{node: state} of the default partition, or None when the controller does not answer."""
    if shutil.which("sinfo") is None or not SLURM_CONF.exists():
        return None
    try:
        out = subprocess.run(
            ["sinfo", "-h", "-N", "-p", "debug", "-o", "%N %T %c"],
            env=_slurm_env(), capture_output=True, text=True, timeout=30, check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    states = {}
    for line in out.splitlines():
        name, state, _cpus = line.split()
        states[name] = state.rstrip("*~#!%$@^-")  # drop sinfo's state suffix flags
    return states


def _ready() -> bool:
    states = _node_states()
    return bool(states) and set(states) == set(NODES) and set(states.values()) <= _OK_NODE_STATES


def _info() -> SlurmCluster:
    out = subprocess.run(
        ["sinfo", "-h", "-N", "-p", "debug", "-o", "%c"],
        env=_slurm_env(), capture_output=True, text=True, timeout=30, check=True,
    ).stdout.split()
    return SlurmCluster(
        partition="debug",
        preempt_partition="urgent",
        nodes=NODES,
        cpus_per_node=int(out[0]) if out else 0,
        slurm_conf=str(SLURM_CONF),
        state_dir=str(STATE_DIR),
        script=str(CLUSTER_SCRIPT),
    )


def _unavailable(reason: str) -> str:
    if _switch() == "required":
        raise SlurmClusterError(f"{ENV_SWITCH}=1 but no Slurm test cluster: {reason}")
    return reason


def _tail(path: Path, lines: int = 25) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


@functools.cache
def ensure_cluster() -> SlurmCluster | str:
    """Bring the local cluster up (idempotent, ~1 s when already up) and describe it.

    Returns a :class:`SlurmCluster`, or a string (the reason to skip) when Slurm tests cannot
    run here. Raises :class:`SlurmClusterError` when bring-up was possible but failed. On
    success SLURM_CONF is set in ``os.environ`` so that sbatch/sacct called from this process
    (submitit included) talk to this cluster.
    """
    if _switch() == "off":
        return f"Slurm tests disabled by {ENV_SWITCH}=0"
    if not sys.platform.startswith("linux"):
        return _unavailable("the local Slurm cluster needs Linux")
    if not CLUSTER_SCRIPT.exists():
        return _unavailable(f"{CLUSTER_SCRIPT} not found (lift_dist is not a source checkout)")
    is_root = hasattr(os, "geteuid") and os.geteuid() == 0
    if not is_root:
        if _ready():  # someone with root already started it
            os.environ["SLURM_CONF"] = str(SLURM_CONF)
            return _info()
        return _unavailable(
            f"not root: cannot install/start the local Slurm cluster "
            f"(run `sudo bash {CLUSTER_SCRIPT} up`, or set {ENV_SWITCH}=0)"
        )
    if shutil.which("slurmctld") is None and shutil.which("apt-get") is None:
        return _unavailable("Slurm is not installed and there is no apt-get to install it")

    STATE_DIR.parent.mkdir(parents=True, exist_ok=True)
    log = STATE_DIR.parent / f"{STATE_DIR.name}.up.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "SBATCH_", "SRUN_"))}
    try:
        with open(log, "w") as out:  # a file, not a pipe: daemons must not hold our pipe open
            rc = subprocess.run(
                ["bash", str(CLUSTER_SCRIPT), "up"],
                stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                env=env, timeout=UP_TIMEOUT_S,
            ).returncode
    except subprocess.TimeoutExpired:
        raise SlurmClusterError(f"cluster.sh up took over {UP_TIMEOUT_S}s; log {log}:\n{_tail(log)}") from None
    if rc == 3:  # packages could not be installed (offline, no apt, ...): an environment limit
        return _unavailable(f"could not install Slurm with apt-get (log {log}):\n{_tail(log, 8)}")
    if rc != 0:
        raise SlurmClusterError(f"cluster.sh up failed (rc={rc}); log {log}:\n{_tail(log)}")
    if not _ready():
        raise SlurmClusterError(f"cluster.sh up succeeded but n1..n4 are not idle: {_node_states()}")
    os.environ["SLURM_CONF"] = str(SLURM_CONF)
    return _info()


try:
    import pytest
except ImportError:  # pragma: no cover - pytest is a dev dependency
    pytest = None

if pytest is not None:

    @pytest.fixture(scope="session")
    def slurm_cluster() -> SlurmCluster:
        """The running local Slurm cluster; skips the test when it cannot run here."""
        try:
            result = ensure_cluster()
        except SlurmClusterError as e:
            pytest.fail(str(e), pytrace=False)
        if isinstance(result, str):
            pytest.skip(result)
        return result
