"""``moemix assign DOMAINS_DIR INPUT... --out OUT_DIR``: route new documents to a finished domains stage.

Uses the cluster model the domains stage saved (``DOMAINS_DIR/clusters/``), so new data lands in exactly
the domains the mixture was chosen over. Inputs are parquet or JSON-lines files; each is streamed in
batches and written as ``OUT_DIR/<stem>.parquet`` with the input columns plus ``domain_id`` and
``domain`` (the domain name).
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from moemix.errors import MoemixError

JSONL_SUFFIXES = (".jsonl", ".json", ".ndjson")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "assign",
        help="assign new documents to the domains of a finished domains stage",
        description="Assign documents (parquet or JSON lines) to the cluster domains of DOMAINS_DIR.",
    )
    p.add_argument("domains_dir", metavar="DOMAINS_DIR", help="a domains stage directory (or its clusters/)")
    p.add_argument("inputs", metavar="INPUT", nargs="+", help="parquet or .jsonl files")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="where to write <stem>.parquet files")
    p.add_argument(
        "--text-column", default="text", help="column/key holding the document text (default: text)"
    )
    p.add_argument(
        "--batch-size",
        type=int,
        default=1024,
        help="documents embedded and assigned at a time (default: 1024)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=_cmd_assign)


def resolve_model_dir(domains_dir: Path) -> Path:
    """Accept the stage directory, its ``clusters/`` folder, or any folder holding a saved model."""
    from moemix.domains.cluster import MODEL_FILE

    for cand in (domains_dir / "clusters", domains_dir):
        if (cand / MODEL_FILE).exists():
            return cand
    if not domains_dir.exists():
        raise MoemixError(f"assign: {domains_dir} does not exist")
    raise MoemixError(
        f"assign: no cluster model in {domains_dir} (expected {domains_dir / 'clusters' / MODEL_FILE}; "
        "label-mode domains have no model to assign with)"
    )


def _cmd_assign(args: argparse.Namespace) -> int:
    paths = assign_files(
        Path(args.domains_dir),
        [Path(p) for p in args.inputs],
        Path(args.out),
        text_column=args.text_column,
        batch_size=args.batch_size,
        progress=not args.quiet,
    )
    for p in paths:
        print(p)
    return 0


def assign_files(
    domains_dir: Path,
    inputs: list[Path],
    out_dir: Path,
    text_column: str = "text",
    batch_size: int = 1024,
    progress: bool = False,
) -> list[Path]:
    import pyarrow as pa
    import pyarrow.parquet as pq
    from tqdm.auto import tqdm

    from moemix._io import atomic_path
    from moemix.domains.assign import add_domain_column, assign_batches, output_names
    from moemix.domains.cluster import ClusterModel

    if batch_size < 1:
        raise MoemixError(f"assign: --batch-size must be >= 1, got {batch_size}")
    model = ClusterModel.load(resolve_model_dir(domains_dir))
    names = np.array(model.domain_names, dtype=object)
    for f in inputs:
        if not f.is_file():
            raise MoemixError(f"assign: input {f} not found")
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    with tqdm(desc="assign", unit="doc", disable=not progress) as bar:
        for f, out_name in zip(inputs, output_names(inputs)):
            out_path = out_dir / out_name
            with atomic_path(out_path) as tmp:
                writer = None
                try:
                    for batch, ids in assign_batches(
                        model, _batches(f, batch_size, text_column), text_column
                    ):
                        table = add_domain_column(pa.Table.from_batches([batch]), ids)
                        if "domain" in table.schema.names:
                            table = table.drop_columns(["domain"])
                        table = table.append_column("domain", pa.array(names[ids].tolist(), pa.string()))
                        if writer is None:
                            writer = pq.ParquetWriter(tmp, table.schema)
                        writer.write_table(table.cast(writer.schema))
                        bar.update(table.num_rows)
                    if writer is None:  # no rows: still write a valid (empty) file
                        pq.write_table(
                            pa.table(
                                {"domain_id": pa.array([], pa.int32()), "domain": pa.array([], pa.string())}
                            ),
                            tmp,
                        )
                finally:
                    if writer is not None:
                        writer.close()
            written.append(out_path)
    return written


def _batches(path: Path, batch_size: int, text_column: str) -> Iterator:
    """Record batches of a parquet or JSON-lines file, checked for the text column."""
    import pyarrow as pa

    from moemix.domains.units import streaming_parquet

    if path.suffix in JSONL_SUFFIXES:
        rows: list[dict] = []
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise MoemixError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
                if not isinstance(row, dict) or text_column not in row:
                    raise MoemixError(f"{path}:{lineno}: no key {text_column!r}")
                rows.append(row)
                if len(rows) >= batch_size:
                    yield pa.RecordBatch.from_pylist(rows)
                    rows = []
        if rows:
            yield pa.RecordBatch.from_pylist(rows)
        return
    try:
        pf = streaming_parquet(path)
    except Exception as e:  # pyarrow raises several types for non-parquet input
        raise MoemixError(f"{path}: not a parquet or .jsonl file ({type(e).__name__})") from None
    if text_column not in pf.schema_arrow.names:
        raise MoemixError(f"{path}: no column {text_column!r} (columns: {', '.join(pf.schema_arrow.names)})")
    yield from pf.iter_batches(batch_size=batch_size)
