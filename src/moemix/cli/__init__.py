"""The ``moemix`` command. It sits above every other package (it wires the pipeline to ``ray_jobs``),
so nothing inside moemix imports it."""

import os

# Before anything imports pyarrow: Arrow's C++ default pool is chosen at its first allocation, and under
# mimalloc the Parquet reader's buffers grew with the rows a process streamed (the domains stage in
# process, and the Ray workers a local ``ray.init`` starts from this environment). The Ray Data tasks
# set the same for themselves (moemix.ray_jobs.data.WORKER_ENV), for clusters started elsewhere.
os.environ.setdefault("ARROW_DEFAULT_MEMORY_POOL", "system")

from moemix.cli.main import build_parser, main  # noqa: E402

__all__ = ["build_parser", "main"]
