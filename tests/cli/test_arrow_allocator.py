"""The command runs Arrow on the system allocator (docs/benchmarks/domains.md, session 10: under
mimalloc a worker's memory grew with the rows it streamed)."""

from __future__ import annotations

import os
import subprocess
import sys


def test_the_cli_puts_arrow_on_the_system_allocator():
    env = {k: v for k, v in os.environ.items() if k != "ARROW_DEFAULT_MEMORY_POOL"}
    code = "import moemix.cli, pyarrow; print(pyarrow.default_memory_pool().backend_name)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "system"
