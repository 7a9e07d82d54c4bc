"""The README's two commands: the second is the very line that CI runs (`.ci/run`)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    block = re.search(r"```bash\n(.*?)```", text, re.S)
    assert block is not None, "README.md has no bash block"
    return [line for line in block.group(1).splitlines() if line.strip()]


def test_ci_runs_the_readme_test_command_exactly():
    commands = _readme_commands()
    assert len(commands) == 2 and commands[1].endswith("python -m pytest -q")
    ci = [line for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line.strip() and not line.startswith("#")]
    assert commands[1] in ci, f"{commands[1]!r} is not a line of .ci/run"
    # the rest of .ci/run is shell set-up only: no other install or test command
    assert [line for line in ci if line != commands[1]] == [
        "set -euo pipefail", 'cd "$(dirname "$0")/.."']
