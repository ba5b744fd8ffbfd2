"""The project image: pinned versions, CUDA torch before the project, the project version."""
from __future__ import annotations

import re

from tests.unit.infra.scan import (
    DOCKERFILE,
    README,
    REPO,
    containers,
    k8s_objects,
    pinned,
    pyproject,
)


def test_images_are_the_project_image_at_the_project_version():
    image = f"YOUR-REGISTRY/bertpipe:{pyproject()['project']['version']}"
    ours = {c["image"] for _, o in k8s_objects() for c in containers(o) if "bertpipe" in c["image"]}
    assert ours == {image}
    assert f"-t {image}" in README.read_text() and f"-t {image}" in DOCKERFILE.read_text()


def test_dockerfile_installs_pinned_cuda_torch_before_the_project():
    text = DOCKERFILE.read_text()
    assert re.search(r"^FROM python:3\.11", text, re.M)
    torch = re.search(r"pip install torch==([\w.]+)", text)
    assert torch and torch.group(1) == pinned("torch")
    assert text.index("torch==") < text.index("pip install -e .")
    # what the MLflow deployment needs from the same image: postgresql:// and basic-auth
    assert "psycopg2-binary" in text and "flask-wtf" in text
    workdir = re.search(r"^WORKDIR (\S+)", text, re.M).group(1)
    assert workdir == "/home/ray/bertpipe"  # where Ray starts, so where jobs run
    ignore = (DOCKERFILE.parent / "Dockerfile.dockerignore").read_text().split()
    for source in re.findall(r"^COPY (?:--\S+ )*(.+) \S+$", text, re.M):
        for item in source.split():
            assert (REPO / item).exists(), f"COPY {item}: not in the repo"
            assert f"!{item}" in ignore, f"COPY {item}: Dockerfile.dockerignore leaves it out"
