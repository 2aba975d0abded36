"""The local Slurm test cluster for the Slurm end-to-end tests (a test helper; the library never imports it).

``.ci/run`` starts it with ``tools/slurm_local/cluster.sh up DIR`` and exports ``RLAD_SLURM_CLUSTER=DIR``. Run
alone, as root on a machine where Slurm's packages are installed, the tests start one of their own in a temporary
folder and stop it by PID at the end. Anywhere else they skip and say why.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "tools" / "slurm_local" / "cluster.sh"
DAEMONS = ("slurmctld", "slurmd", "slurmdbd", "munged", "mariadbd", "sbatch", "sacct", "sacctmgr")


@dataclass
class SlurmCluster:
    state_dir: Path
    env: dict[str, str]
    """cluster.env: SLURM_CONF, RLAD_SLURM_ACCOUNT, RLAD_SLURM_PARTITION, RLAD_SLURM_NODES."""
    owned: bool
    """Started by these tests (and stopped by them), not by .ci/run."""

    @property
    def account(self) -> str:
        return self.env["RLAD_SLURM_ACCOUNT"]

    @property
    def partition(self) -> str:
        return self.env["RLAD_SLURM_PARTITION"]

    def run(self, *args: str, check: bool = True) -> str:
        """A Slurm client command against this cluster; its stdout."""
        proc = subprocess.run(list(args), env={**os.environ, **self.env}, capture_output=True, text=True,
                              timeout=60)
        if check and proc.returncode:
            raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
        return proc.stdout


def _read_env(state_dir: Path) -> dict[str, str]:
    lines = (state_dir / "cluster.env").read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _answers(cluster: SlurmCluster) -> str | None:
    """None when the controller answers, else why not."""
    try:
        out = cluster.run("scontrol", "ping", check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"scontrol ping: {err}"
    return None if "UP" in out else f"scontrol ping: {out.strip() or 'no answer'}"


def start_or_explain() -> tuple[SlurmCluster | None, str]:
    """(the cluster, "") or (None, why the Slurm tests cannot run here)."""
    if os.environ.get("RLAD_SLURM_CLUSTER"):
        state = Path(os.environ["RLAD_SLURM_CLUSTER"])
        if not (state / "cluster.env").exists():
            return None, f"RLAD_SLURM_CLUSTER={state} has no cluster.env: run tools/slurm_local/cluster.sh up {state}"
        cluster = SlurmCluster(state, _read_env(state), owned=False)
        why = _answers(cluster)
        return (cluster, "") if why is None else (None, f"the cluster in {state} does not answer ({why})")
    if os.environ.get("RLAD_SLURM_UNAVAILABLE"):
        return None, os.environ["RLAD_SLURM_UNAVAILABLE"]
    missing = [d for d in DAEMONS if not shutil.which(d) and not Path("/usr/sbin", d).exists()]
    if missing:
        return None, (f"no local Slurm cluster: {', '.join(missing)} not installed. Run .ci/run (as root: it installs "
                      "Debian's packages and starts one), or tools/slurm_local/cluster.sh up DIR and export "
                      "RLAD_SLURM_CLUSTER=DIR")
    if os.geteuid() != 0:
        return None, ("no local Slurm cluster: starting one needs root (or export RLAD_SLURM_CLUSTER=DIR of a running "
                      "one)")
    state = Path(tempfile.mkdtemp(prefix="rlad-slurm-test."))
    proc = subprocess.run([str(SCRIPT), "up", str(state)], capture_output=True, text=True, timeout=300)
    if proc.returncode:
        subprocess.run([str(SCRIPT), "down", str(state)], capture_output=True, timeout=120)
        shutil.rmtree(state, ignore_errors=True)
        return None, f"tools/slurm_local/cluster.sh up failed: {proc.stderr.strip().splitlines()[-1:]}"
    return SlurmCluster(state, _read_env(state), owned=True), ""


def stop(cluster: SlurmCluster) -> None:
    """Stop a cluster these tests started (by the PIDs it recorded); leave one .ci/run started alone."""
    if cluster.owned:
        subprocess.run([str(SCRIPT), "down", str(cluster.state_dir)], check=True, timeout=180)
        shutil.rmtree(cluster.state_dir, ignore_errors=True)
