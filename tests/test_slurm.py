"""The sbatch template against a real one-node SLURM on this machine.

The fixture installs slurm-wlm and munge from Debian when they are missing (root only), writes a
minimal slurm.conf (this host, its CPUs, proctrack/linuxproc and task/none so that no cgroups are
needed in a container) under /tmp/mcl-slurm-test, and starts munged, slurmctld and slurmd. It is
idempotent: daemons it started in an earlier run with the same configuration are reused, else
they are stopped (by the pids in their pid files) and started again.

The test submits both templates as a user would, with the venv's python and a tiny config:
single_node.sbatch gets the USR1 that `--signal=B:USR1@180` sends near the time limit, and must
requeue itself, resume from its checkpoint and finish the run; multi_node.sbatch (on the one node
there is) must start its torchrun through srun with c10d rendezvous and finish.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import ROOT, free_port, tiny_config

STATE = "/tmp/mcl-slurm-test"
CONF = os.path.join(STATE, "slurm.conf")
PORTS = (16817, 16818)  # slurmctld, slurmd: not the defaults, to stay clear of a real installation
DAEMONS = ("/usr/sbin/munged", "/usr/sbin/slurmctld", "/usr/sbin/slurmd")


def _run(cmd: list[str], timeout: float = 60, env: dict | None = None, check: bool = False) -> subprocess.CompletedProcess:
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)
    if check and out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed ({out.returncode}): {out.stdout[-2000:]} {out.stderr[-2000:]}")
    return out


def _install() -> None:
    if all(os.path.exists(d) for d in DAEMONS) and shutil.which("sbatch"):
        return
    if os.geteuid() != 0:
        pytest.skip("SLURM is not installed and installing it (apt-get install slurm-wlm munge) needs root")
    if not shutil.which("apt-get"):
        pytest.skip("SLURM is not installed and there is no apt-get to install slurm-wlm and munge")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    for cmd in (["apt-get", "update", "-q"], ["apt-get", "install", "-y", "-q", "slurm-wlm", "munge"]):
        try:
            out = _run(cmd, timeout=900, env=env)
        except subprocess.TimeoutExpired:
            pytest.skip(f"'{' '.join(cmd)}' timed out; cannot install SLURM here")
        if out.returncode:
            pytest.skip(f"'{' '.join(cmd)}' failed, cannot install SLURM here: {out.stderr[-500:]}")


def _conf_text() -> str:
    host = socket.gethostname().split(".")[0]
    cpus = os.cpu_count() or 1
    return f"""# written by tests/test_slurm.py
ClusterName=mcltest
SlurmctldHost={host}
SlurmctldPort={PORTS[0]}
SlurmdPort={PORTS[1]}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation={STATE}/state
SlurmdSpoolDir={STATE}/spool
SlurmctldPidFile={STATE}/slurmctld.pid
SlurmdPidFile={STATE}/slurmd.pid
SlurmctldLogFile={STATE}/slurmctld.log
SlurmdLogFile={STATE}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
MpiDefault=none
SwitchType=switch/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
SlurmdTimeout=60
MinJobAge=600
NodeName={host} CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def _pid_alive(pidfile: str) -> int:
    try:
        pid = int(open(pidfile).read().strip())
        os.kill(pid, 0)
        return pid
    except (OSError, ValueError):
        return 0


def _stop(pidfile: str) -> None:
    """Stop a daemon this fixture started earlier (its pid file is in our state directory)."""
    pid = _pid_alive(pidfile)
    if not pid:
        return
    os.kill(pid, signal.SIGTERM)
    for _ in range(50):
        if not _pid_alive(pidfile):
            return
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)


def _munge_ok() -> bool:
    enc = subprocess.run(["munge", "-n"], capture_output=True)
    return enc.returncode == 0 and subprocess.run(["unmunge"], input=enc.stdout, capture_output=True).returncode == 0


def _start_munge() -> None:
    if _munge_ok():
        return
    os.makedirs("/run/munge", exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    if not os.path.exists("/etc/munge/munge.key"):
        _run(["runuser", "-u", "munge", "--", "mungekey", "--create"], check=True)
    _run(["runuser", "-u", "munge", "--", "/usr/sbin/munged"], check=True)
    for _ in range(50):
        if _munge_ok():
            return
        time.sleep(0.1)
    raise RuntimeError("munged started but munge -n | unmunge fails")


def _node_state(env: dict) -> str:
    out = _run(["sinfo", "-h", "-o", "%t"], env=env)
    return out.stdout.strip() if out.returncode == 0 else ""


@pytest.fixture(scope="module")
def slurm_env():
    _install()
    os.makedirs(os.path.join(STATE, "state"), exist_ok=True)
    os.makedirs(os.path.join(STATE, "spool"), exist_ok=True)
    env = dict(os.environ, SLURM_CONF=CONF)
    text = _conf_text()
    same = os.path.exists(CONF) and open(CONF).read() == text
    running = _pid_alive(os.path.join(STATE, "slurmctld.pid")) and _pid_alive(os.path.join(STATE, "slurmd.pid"))
    _start_munge()
    if not (same and running and _run(["scontrol", "ping"], env=env).returncode == 0):
        _stop(os.path.join(STATE, "slurmd.pid"))
        _stop(os.path.join(STATE, "slurmctld.pid"))
        with open(CONF, "w") as f:
            f.write(text)
        _run(["/usr/sbin/slurmctld", "-f", CONF], env=env, check=True)
        _run(["/usr/sbin/slurmd", "-f", CONF], env=env, check=True)
    host = socket.gethostname().split(".")[0]
    deadline = time.time() + 60
    while time.time() < deadline:
        state = _node_state(env)
        if state in ("idle", "mix", "alloc"):
            break
        if state.startswith(("down", "drain")):
            _run(["scontrol", "update", f"nodename={host}", "state=resume"], env=env)
        time.sleep(0.5)
    else:
        logs = "".join(open(os.path.join(STATE, f)).read()[-1500:] for f in ("slurmctld.log", "slurmd.log")
                       if os.path.exists(os.path.join(STATE, f)))
        raise RuntimeError(f"the SLURM node did not become idle (sinfo: {_node_state(env)!r})\n{logs}")
    return env


def job_state(job: str, env: dict) -> dict:
    out = _run(["scontrol", "show", "job", "-o", job], env=env)
    return dict(re.findall(r"(\w+)=(\S*)", out.stdout))


FINAL = ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY", "PREEMPTED", "BOOT_FAIL")


def submit(template: str, env: dict, log, run_dir, *args: str, nodes: int = 1) -> str:
    # the templates ask for 8 GPUs and 64 CPUs per node; a user on a smaller partition overrides
    # them on the command line, as here: no GPUs, 1 CPU per job so that both jobs run at once
    out = _run(["sbatch", "--parsable", f"--nodes={nodes}", "--gpus-per-node=0", "--cpus-per-task=1", "--time=10",
                f"--output={log}", os.path.join(ROOT, "launch", "slurm", template),
                "--config", args[0], "--run-dir", str(run_dir), *args[1:]], env=env, check=True)
    return out.stdout.strip().split(";")[0]


def check_run(run_dir, steps: int, info: dict, log) -> str:
    out = log.read_text() if log.exists() else ""
    assert info.get("JobState") == "COMPLETED", f"{info}\n{out[-5000:]}"
    with open(run_dir / "manifest.json") as f:
        manifest = json.load(f)["steps"]
    assert manifest["stage_0/train"]["status"] == "done"
    assert all(s["status"] == "done" for s in manifest.values()), manifest
    with open(run_dir / "stage_0" / "metrics.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == list(range(1, steps + 1))
    return out


@pytest.mark.launch
def test_templates_on_real_slurm_requeue_on_usr1_and_resume(tmp_path, shards, slurm_env):
    cfg = tiny_config(tmp_path, shards)
    env = dict(slurm_env, MCL_PYTHON=sys.executable, OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="",
               PYTHONUNBUFFERED="1", MCL_RDZV_PORT=str(free_port()))
    single_run, single_log = tmp_path / "single", tmp_path / "single.out"
    multi_run, multi_log = tmp_path / "multi", tmp_path / "multi.out"
    single = submit("single_node.sbatch", dict(env, MCL_NPROC_PER_NODE="2"), single_log, single_run, cfg,
                    "train.max_steps=30", "train.checkpoint_every=2", "train.log_every=1")
    # multi_node.sbatch on the one node there is: srun, one torchrun per node, c10d on the first node
    multi = submit("multi_node.sbatch", dict(env, MCL_NPROC_PER_NODE="1"), multi_log, multi_run, cfg,
                   "train.max_steps=4", "train.checkpoint_every=2", "train.log_every=1")
    ckpts = single_run / "stage_0" / "checkpoints"
    deadline, signalled, info = time.time() + 300, False, {}
    while time.time() < deadline:
        info = {job: job_state(job, slurm_env) for job in (single, multi)}
        # a finished checkpoint, not the temp file of one still being written: USR1 before the
        # first checkpoint lands restarts at step 0 (test_train covers that), not "resuming"
        if not signalled and ckpts.exists() and any(n.startswith("step_") for n in os.listdir(ckpts)):
            # what --signal=B:USR1@180 does near the time limit: USR1 to the batch script only
            _run(["scancel", "--batch", "--signal=USR1", single], env=slurm_env, check=True)
            signalled = True
        if signalled and info[single].get("JobState") == "PENDING" and info[single].get("Reason") == "BeginTime":
            _run(["scontrol", "update", f"jobid={single}", "StartTime=now"], env=slurm_env)  # requeued: no delay
        if all(i.get("JobState") in FINAL for i in info.values()):
            break
        time.sleep(0.5)
    out = check_run(single_run, 30, info[single], single_log)
    assert signalled
    assert "requeueing job" in out and "(restart 1)" in out, out[-5000:]
    assert "resuming stage 0" in out, out[-5000:]
    out = check_run(multi_run, 4, info[multi], multi_log)
    assert "on 1 node(s) x 1, rendezvous" in out, out[-3000:]
