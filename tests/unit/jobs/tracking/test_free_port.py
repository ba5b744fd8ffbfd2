"""`free_port()`: ports another process binds later (servers, MASTER_PORT) are picked above
Ray's worker ports and below the kernel's ephemeral range (an outgoing connection can take an
ephemeral port first: one took the GCS port `cluster up` had picked), never twice in one
process."""
from pathlib import Path

from jobs.tracking.server import PORTS_FROM, free_port


def test_ports_are_above_rays_worker_ports_below_the_ephemeral_range_and_never_repeat():
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port() for _ in range(40)]
    assert PORTS_FROM == 20000  # Ray's default worker ports end at 19999
    assert all(PORTS_FROM <= p < ephemeral for p in ports), ports
    assert len(set(ports)) == len(ports)
