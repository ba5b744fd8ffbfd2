"""The Ray cluster launcher config: Ray's own schema, the project installed, a private
dashboard with token auth."""
from __future__ import annotations

import re

from tests.unit.infra.scan import (
    LAUNCHER,
    REPO,
    check_command,
    launcher_commands,
    load,
    pinned,
    rel,
)


def test_cluster_launcher_config_passes_rays_own_validation():
    from ray.autoscaler._private.util import prepare_config, validate_config
    raw = load(LAUNCHER)[0]
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type",
                "max_workers", "idle_timeout_minutes", "file_mounts", "setup_commands"):
        assert key in raw, f"{rel(LAUNCHER)} has no {key}"
    validate_config(prepare_config(raw))  # what `ray up` runs before it launches anything
    types = raw["available_node_types"]
    assert raw["head_node_type"] in types
    assert any(t["resources"].get("GPU", 0) > 0 and t["max_workers"] > t.get("min_workers", 0)
               for t in types.values()), "no autoscaled GPU node type"


def test_cluster_launcher_installs_the_project_it_mounts():
    raw = load(LAUNCHER)[0]
    mounts = raw["file_mounts"]
    target = next(t for t, src in mounts.items() if (REPO / src).resolve() == REPO)
    setup = " ; ".join(raw["setup_commands"])
    torch = re.search(r"pip install[^;]*\btorch==([\w.]+)", setup)
    assert torch and torch.group(1) == pinned("torch")
    assert f"-e {target}" in setup and setup.index("torch==") < setup.index(f"-e {target}")


def test_cluster_launcher_keeps_the_dashboard_private_and_auth_on():
    starts = [c for c in launcher_commands() if c.argv[:2] == ("ray", "start")]
    assert starts
    for cmd in starts:
        assert dict(cmd.env).get("RAY_AUTH_MODE") == "token", f"{cmd.where}: `{cmd}`"
        opts = check_command(cmd)
        if opts["head"]:
            assert opts["dashboard_host"] == "127.0.0.1", "the Jobs API would be reachable"
    rules = load(LAUNCHER)[0]["provider"].get("security_group", {}).get("IpPermissions", [])
    assert not [r for r in rules if r.get("FromPort", 0) <= 8265 <= r.get("ToPort", -1)]
