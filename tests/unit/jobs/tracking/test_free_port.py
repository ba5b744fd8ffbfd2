"""`free_port(low)`: ports another process binds later are picked outside the kernel's
ephemeral range, where an outgoing connection could take them first (it once took the GCS
port `cluster up` had picked), and never twice in one process."""
from pathlib import Path

from jobs.tracking.server import free_port


def test_ports_from_low_are_below_the_ephemeral_range_and_never_repeat():
    ephemeral = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = [free_port(20000) for _ in range(40)]
    assert all(20000 <= p < ephemeral for p in ports), ports
    assert len(set(ports)) == len(ports)
