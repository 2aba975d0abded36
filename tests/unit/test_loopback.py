"""On one machine every socket of a job listens on the loopback interface (rlad_megatron/loopback.py,
rlad_megatron/launch_local.py): the ranks' store, gloo, the weight-sync pair group of a disaggregated engine, and
torchrun itself (no rendezvous socket at all). The whole job's sockets are checked during a real run in
tests/e2e/test_trainer_resume.py."""
from __future__ import annotations

import ipaddress
import json
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

import psutil
import pytest
import torch

from rlad_megatron.launch_local import command, torchrun_args
from rlad_megatron.loopback import is_loopback

REPO = Path(__file__).resolve().parents[2]


def _listening(pid: int | None = None) -> set[tuple[str, int]]:
    return {(c.laddr.ip, c.laddr.port) for c in psutil.Process(pid).net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


def _all_loopback(addresses) -> bool:
    return all(ipaddress.ip_address(ip.split("%")[0]).is_loopback for ip, _ in addresses)


def _network_interface() -> str | None:
    for name, addresses in psutil.net_if_addrs().items():
        if any(a.family == socket.AF_INET and not ipaddress.ip_address(a.address).is_loopback for a in addresses):
            return name
    return None


def test_loopback_addresses() -> None:
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("192.0.2.7") and not is_loopback("no-such-host.invalid")


def test_the_weight_sync_pair_listens_on_loopback_only(monkeypatch) -> None:
    from rlad_megatron.weight_sync.dist_transport import connect_store, join_pair_group, pair_store

    interface = _network_interface()
    if interface:  # what gloo would use on a machine whose hostname resolves to its network address
        monkeypatch.setenv("GLOO_SOCKET_IFNAME", interface)
    before = _listening()
    store = pair_store()
    groups = {}

    def engine_side() -> None:
        groups[1] = join_pair_group(connect_store("127.0.0.1", store.port), 1)

    other = threading.Thread(target=engine_side)
    other.start()
    groups[0] = join_pair_group(store, 0)
    other.join(timeout=60)
    got = torch.zeros(3)
    receiver = threading.Thread(target=lambda: groups[1].recv([got], 0, 0).wait())
    receiver.start()
    groups[0].send([torch.arange(3.0)], 1, 0).wait()
    receiver.join(timeout=60)
    assert torch.equal(got, torch.arange(3.0))
    new = _listening() - before
    assert (store.port in {port for _, port in new}) and len(new) >= 2, new  # the store and gloo's pair sockets
    assert _all_loopback(new), new


_RANK = """
import ipaddress, json, os, sys, psutil, torch, torch.distributed as dist
from rlad_megatron.parallel import init_distributed
init_distributed()
t = torch.ones(1)
dist.all_reduce(t)
mine = [(c.laddr.ip, c.laddr.port) for c in psutil.Process().net_connections(kind="inet") if c.status == "LISTEN"]
with open(f"rank{dist.get_rank()}.json", "w") as f:  # each rank its own file: stdout lines would interleave
    json.dump({"rank": dist.get_rank(), "sum": t.item(), "listening": mine,
               "gloo": os.environ.get("GLOO_SOCKET_IFNAME")}, f)
print("done", flush=True)
dist.barrier()
"""


def test_launch_local_opens_no_socket_but_the_ranks_loopback_ones(tmp_path: Path) -> None:
    """torchrun's agent listens on nothing; rank 0's store and both ranks' gloo listen on 127.0.0.1 (before:
    ``--standalone`` listened on ``::`` twice, and gloo on the hostname's address)."""
    (tmp_path / "rank_main.py").write_text(_RANK)
    interface = _network_interface()
    (tmp_path / "tmp").mkdir()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(tmp_path)]), "OMP_NUM_THREADS": "1",
           "TMPDIR": str(tmp_path / "tmp"), **({"GLOO_SOCKET_IFNAME": interface} if interface else {})}
    proc = subprocess.Popen(command(2, "rank_main"), env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, cwd=tmp_path)
    agent_sockets = set()
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if proc.poll() is None:
            try:
                agent_sockets |= _listening(proc.pid)
            except psutil.NoSuchProcess:
                pass
    assert proc.wait(timeout=120) == 0, "".join(lines)[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(r["rank"] for r in ranks) == [0, 1] and all(r["sum"] == 2.0 for r in ranks)
    assert all(r["gloo"] == "lo" for r in ranks)
    assert agent_sockets == set()  # the rendezvous is a file store; the agent hosts no store
    assert len(ranks[0]["listening"]) + len(ranks[1]["listening"]) >= 3  # rank 0's store, gloo on both ranks
    assert all(_all_loopback(r["listening"]) for r in ranks), ranks
    assert not list((tmp_path / "tmp").glob("rlad-rdzv-*"))  # the rendezvous folder is removed


def test_the_command_and_torchrun_options() -> None:
    assert command(2, "rlad_megatron.cli", ["train", "--config", "c.yaml"], max_restarts=1) == [
        sys.executable, "-m", "rlad_megatron.launch_local", "--nproc-per-node=2", "--max-restarts=1", "-m",
        "rlad_megatron.cli", "train", "--config", "c.yaml"]
    args = torchrun_args(2, Path("/tmp/x/rendezvous"))
    assert "--rdzv-conf=store_type=file" in args and "--local-addr=127.0.0.1" in args
    assert "--standalone" not in args and "--rdzv-endpoint=/tmp/x/rendezvous" in args
