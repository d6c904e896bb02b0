"""The README's two commands are the ones CI runs: a drift between them would let CI pass on commands no user types."""

from __future__ import annotations

import re

from tests.conftest import REPO_ROOT


def _readme_commands() -> list[str]:
    text = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
    quickstart = text.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```bash\n(.+?)\n```", quickstart)


def test_ci_runs_exactly_the_readme_commands():
    commands = _readme_commands()
    assert len(commands) == 2, commands
    assert "quickstart" in commands[0] and "pytest" in commands[1]
    ci_lines = [line.strip() for line in (REPO_ROOT / ".ci" / "run").read_text().splitlines()]
    for command in commands:
        assert command in ci_lines, f"README command not run by .ci/run: {command}"
    assert "set -euo pipefail" in ci_lines
    assert ci_lines.index("python -m pip install torch==2.14.1 torchvision==0.29.1") < ci_lines.index(commands[0])
