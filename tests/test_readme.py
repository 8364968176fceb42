"""The README's contents links and its tiny quickstart run, checked against the README as written."""

from __future__ import annotations

import re
import shlex

import pytest

from tests.conftest import REPO
from tests.test_cli import run

README = (REPO / "README.md").read_text()


def _anchor(title: str, seen: dict[str, int]) -> str:
    """GitHub's heading anchor: lower case, punctuation dropped, spaces to '-', '-1', '-2' for repeats."""
    slug = re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")
    count = seen.get(slug, 0)
    seen[slug] = count + 1
    return f"{slug}-{count}" if count else slug


def _headings() -> list[str]:
    outside_code = re.sub(r"```.*?```", "", README, flags=re.S)
    return re.findall(r"^#{2,3} (.+)$", outside_code, flags=re.M)


def test_every_contents_link_reaches_a_heading():
    seen: dict[str, int] = {}
    anchors = {_anchor(title, seen) for title in _headings()}
    contents = README.split("## Contents", 1)[1].split("\n## ", 1)[0]
    links = re.findall(r"\]\(#([^)]+)\)", contents)
    assert len(links) >= 10
    assert [link for link in links if link not in anchors] == []


@pytest.mark.slow
def test_the_tiny_quickstart_run_finishes_as_the_readme_writes_it(tmp_path, fruit_data_dir):
    section = README.split("### A tiny run first", 1)[1]
    command = re.search(r"```bash\n(fruitlab fit .*?)\n```", section, flags=re.S).group(1).replace("\\\n", " ")
    args = shlex.split(command)[1:]
    assert args[:3] == ["fit", "-e", "quickstart"] and "data.max_per_class=20" in args
    env = {"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}", "FRUITLAB_DATA_DIR": str(fruit_data_dir)}
    # 16 s of CPU time warm; the grouped copy search on the fresh data folder and a busy machine: many minutes
    result = run(*args, cwd=tmp_path, env={**env, "FRUITLAB_CACHE_DIR": str(tmp_path / "cache")}, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "val_best/class/acc" in result.stdout and "experiment 'quickstart'" in result.stderr
