"""The README's set-up commands, read out of README.md so that CI runs exactly what a newcomer reads.

README.md marks each command with an HTML comment (invisible when rendered) on the line before a
one-line ```bash block:

    <!-- setup: install -->
    ```bash
    pip install ... && pip install --no-build-isolation -e '.[test]' && gmbound demo
    ```

``python3 .ci/readme_commands.py install`` prints that line; ``.ci/run`` runs it, then the ``test``
command, in a fresh venv. ``tests/test_readme_setup.py`` reads the commands with this same module.
Standard library only: it runs before anything is installed.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
NAMES = ("install", "test")  # in the order a newcomer runs them


def readme_command(name: str, readme: Path = README) -> str:
    """The one-line command of the ```bash block marked ``<!-- setup: name -->`` in ``readme``."""
    if name not in NAMES:
        raise ValueError(f"unknown set-up command {name!r}; known: {', '.join(NAMES)}")
    marker = f"<!-- setup: {name} -->"
    blocks = re.findall(rf"^{re.escape(marker)}[ \t]*\n```bash[ \t]*\n(.*?)^```", readme.read_text(), flags=re.S | re.M)
    if len(blocks) != 1:
        raise ValueError(f"{readme}: expected one ```bash block right after the line {marker!r}, "
                         f"found {len(blocks)}")
    lines = [line for line in blocks[0].splitlines() if line.strip()]
    if len(lines) != 1:
        raise ValueError(f"{readme}: the block marked {marker!r} must hold one command line, "
                         f"it holds {len(lines)}")
    return lines[0].strip()


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(f"usage: {Path(__file__).name} {{{'|'.join(NAMES)}}}", file=sys.stderr)
        return 2
    try:
        print(readme_command(argv[0]))
    except ValueError as err:
        print(f"readme_commands: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
