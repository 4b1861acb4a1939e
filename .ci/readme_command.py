"""Print one of the README's two commands (``quickstart`` or ``test``).

The README marks each command's fenced block with ``<!-- command: NAME -->``; CI runs
exactly that text, so the README can never drift from what CI checks.
"""

import re
import sys
from pathlib import Path

name = sys.argv[1]
readme = Path(__file__).resolve().parent.parent.joinpath("README.md").read_text()
match = re.search(rf"<!-- command: {re.escape(name)} -->\s*```(?:bash|sh)?\n(.*?)```", readme, re.S)
if not match:
    sys.exit(f"README.md has no block marked <!-- command: {name} -->")
print(match.group(1).strip())
