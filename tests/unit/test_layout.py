"""The layout's rules hold: who may import whom, module sizes, one runner for every job."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PACKAGES = ("pipeline", "model", "jobs")


def modules(package: str) -> list[Path]:
    return sorted((REPO / package).rglob("*.py"))


def imported(path: Path) -> set[str]:
    """Top-level names of every module `path` imports (at any depth in the file)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
    return out


@pytest.mark.parametrize("path", modules("model"), ids=lambda p: p.name)
def test_model_imports_nothing_of_ours(path):
    ours = {m for m in imported(path) if m.split(".")[0] in ("pipeline", "jobs")}
    assert not ours, f"model/{path.name} imports {ours}"


@pytest.mark.parametrize("path", modules("pipeline") + modules("model"),
                         ids=lambda p: str(p.relative_to(REPO)))
def test_libraries_never_import_ray_train_mlflow_or_jobs(path):
    bad = {m for m in imported(path)
           if m.startswith(("ray.train", "mlflow", "jobs")) or m in ("ray", "mlflow", "jobs")}
    assert not bad, f"{path.relative_to(REPO)} imports {bad}"


@pytest.mark.parametrize("package", PACKAGES)
def test_no_module_is_over_450_lines(package):
    long = {str(p.relative_to(REPO)): n for p in modules(package)
            if (n := len(p.read_text().splitlines())) > 450}
    assert not long


def test_jobs_keeps_about_a_dozen_top_level_modules():
    top = [p.stem for p in (REPO / "jobs").glob("*.py") if p.stem != "__init__"]
    assert len(top) <= 12, sorted(top)


JOBS = ["jobs.prepare", "jobs.pretrain", "jobs.finetune", "jobs.evaluate", "jobs.embed",
        "jobs.workflow"]


@pytest.fixture(scope="module")
def dash_m_help():
    """`python -m JOB --help` for every job, started together (each is mostly imports)."""
    procs = {m: subprocess.Popen([sys.executable, "-m", m, "--help"], cwd=REPO, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for m in JOBS}
    done = {}
    for module, proc in procs.items():
        out, err = proc.communicate(timeout=180)
        done[module] = (proc.returncode, out, err)
    return done


@pytest.mark.parametrize("module", JOBS)
def test_python_dash_m_still_runs_every_job(module, dash_m_help):
    code, out, err = dash_m_help[module]
    assert code == 0, err
    assert "usage: bertpipe" in out
