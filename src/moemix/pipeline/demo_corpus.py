"""A real, multi-domain text corpus assembled offline from the local Python installation.

The demo (and the tests) need text with known, clearly different domains but may not reach
any hub. Every Python installation ships megabytes of genuine text of very different kinds:
library source code, English docstrings, the language reference manual, RFC 822 e-mails used
as test data, C headers, license texts and package READMEs. We cut them into 1-4 KB
documents, label each with its true domain (`source`) and cache the result as one parquet
file per domain, so the same corpus serves label mode (label column = ``source``) and, with
the label hidden, clustering tests.

The cache key covers the Python version and the installed distributions, so a changed
environment builds a new corpus instead of silently reusing a different one. Building is
deterministic: files are visited in sorted order and nothing is random.
"""

from __future__ import annotations

import ast
import email
import email.policy
import hashlib
import importlib.metadata
import logging
import os
import re
import shutil
import sys
import sysconfig
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from moemix._io import stable_hash, write_json_atomic
from moemix.domains.ingest import unique_name
from moemix.errors import MoemixError

BUILDER_VERSION = 5  # 5: moemix's own README/licence left out
MIN_TOTAL_BYTES = 20_000_000
MIN_DOMAINS = 4
# document size window: big enough to carry a topic, small enough for many docs per domain
TARGET_DOC_CHARS = 2000
MAX_DOC_CHARS = 4000
MIN_DOC_CHARS = 200
# python_code is the elastic domain: it fills the corpus up to this total
TARGET_TOTAL_BYTES = 22_000_000
C_HEADER_CAP = 6_000_000
STATS_NAME = "stats.json"


@dataclass
class DemoCorpus:
    """Where the cached corpus lives and what is in it."""

    root: Path
    files: dict[str, Path]  # domain -> parquet file
    docs: dict[str, int]
    bytes: dict[str, int]
    total_bytes: int = 0
    domains: list[str] = field(default_factory=list)

    def source_config(
        self, name: str = "demo"
    ):  # -> SourceConfig (import kept local: ingest imports heavy deps)
        """A label-mode source over every domain file: label column ``source``, ids from ``id``."""
        from moemix.domains.ingest import SourceConfig

        return SourceConfig(
            path=str(self.root / "*.parquet"), label_column="source", id_column="id", name=name
        )


def default_cache_root() -> Path:
    base = os.environ.get("MOEMIX_CACHE")
    root = Path(base).expanduser() if base else Path.home() / ".cache" / "moemix"
    return root / "demo_corpus"


def corpus_key() -> str:
    """Identity of the inputs: builder version, Python, installed distributions."""
    dists = sorted(f"{d.metadata.get('Name', '?')}=={d.version}" for d in importlib.metadata.distributions())
    return stable_hash(
        {
            "v": BUILDER_VERSION,
            "python": sys.version,
            "stdlib": sysconfig.get_paths()["stdlib"],
            "dists": dists,
        }
    )


def build_demo_corpus(cache_dir: Path | None = None, progress: bool = False) -> DemoCorpus:
    """Return the demo corpus, building it on first use (cached under ``cache_dir``/<key>)."""
    root = Path(cache_dir) if cache_dir is not None else default_cache_root()
    final = root / corpus_key()
    if (final / STATS_NAME).exists():
        return _load(final)
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", dir=root))
    try:
        _build_into(tmp, progress=progress)
        try:
            os.rename(tmp, final)  # atomic publish of the whole directory
        except OSError:
            if not (final / STATS_NAME).exists():  # a stale partial dir (no stats): replace it
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
            # else: a concurrent builder won the race; ours is identical, drop it
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return _load(final)


def _load(path: Path) -> DemoCorpus:
    import json

    stats = json.loads((path / STATS_NAME).read_text())
    domains = list(stats["domains"])
    return DemoCorpus(
        root=path,
        files={d: path / f"{d}.parquet" for d in domains},
        docs={d: int(stats["docs"][d]) for d in domains},
        bytes={d: int(stats["bytes"][d]) for d in domains},
        total_bytes=int(stats["total_bytes"]),
        domains=domains,
    )


# --------------------------------------------------------------------------- chunking


def chunk_blocks(
    blocks: Iterable[str], target: int = TARGET_DOC_CHARS, limit: int = MAX_DOC_CHARS
) -> Iterator[str]:
    """Greedily join consecutive blocks into documents of about ``target`` chars, never over ``limit``.

    A single block over ``limit`` is cut on line boundaries (and, for one enormous line, hard).
    """
    buf: list[str] = []
    size = 0
    for block in blocks:
        for piece in _split_long(block, limit):
            if size and size + len(piece) > limit:
                yield "".join(buf)
                buf, size = [], 0
            buf.append(piece)
            size += len(piece)
            if size >= target:
                yield "".join(buf)
                buf, size = [], 0
    if buf:
        yield "".join(buf)


def _split_long(block: str, limit: int) -> Iterator[str]:
    if len(block) <= limit:
        yield block
        return
    buf, size = [], 0
    for line in block.splitlines(keepends=True):
        while len(line) > limit:
            if buf:
                yield "".join(buf)
                buf, size = [], 0
            yield line[:limit]
            line = line[limit:]
        if size + len(line) > limit:
            yield "".join(buf)
            buf, size = [], 0
        buf.append(line)
        size += len(line)
    if buf:
        yield "".join(buf)


_PARA = re.compile(r"(?:\n[ \t]*){2,}")


def paragraphs(text: str) -> list[str]:
    """Split on blank lines, keeping a trailing blank line on each block so joins stay readable."""
    return [p.strip("\n") + "\n\n" for p in _PARA.split(text) if p.strip()]


_TOP_LEVEL = re.compile(r"^(?=(?:def |class |async def |@|if __name__))", re.MULTILINE)


_METHOD = re.compile(r"^(?=[ \t]+(?:def |async def |@))", re.MULTILINE)


def python_blocks(src: str, limit: int = MAX_DOC_CHARS) -> list[str]:
    """Cut a module at top-level definitions, and big classes at method boundaries, so chunks are
    mostly whole functions/methods."""
    out = []
    for b in _TOP_LEVEL.split(src):
        if not b.strip():
            continue
        if len(b) <= limit:
            out.append(b)
            continue
        pieces = _METHOD.split(b)
        # keep decorators with the def they decorate
        merged: list[str] = []
        for p in pieces:
            if merged and merged[-1].lstrip().startswith("@") and merged[-1].count("\n") <= 3:
                merged[-1] += p
            else:
                merged.append(p)
        out.extend(p for p in merged if p.strip())
    return out


# --------------------------------------------------------------------------- domain collectors
# Each collector yields (doc_id, text); ids are stable: '<domain>/<relative path>#<chunk>'.

Docs = Iterator[tuple[str, str]]


def _stdlib() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError):
        return None


def _stdlib_modules() -> list[Path]:
    root = _stdlib()
    out = []
    for p in sorted(root.rglob("*.py")):
        parts = p.relative_to(root).parts
        # tests are a different kind of code; site-packages is not the standard library
        if parts[0] in ("site-packages", "dist-packages") or {"test", "tests", "idle_test"} & set(parts):
            continue
        out.append(p)
    return out


def _site_packages_modules() -> list[Path]:
    out: list[Path] = []
    for key in ("purelib", "platlib"):
        sp = Path(sysconfig.get_paths()[key])
        if sp.is_dir():
            out.extend(p for p in sorted(sp.rglob("*.py")) if "test" not in p.as_posix().lower())
    return sorted(set(out))


def _numbered(prefix: str, chunks: Iterable[str], min_chars: int = MIN_DOC_CHARS) -> Docs:
    """``(f"{prefix}#{k}", chunk)`` for the chunks of at least ``min_chars``; k counts every chunk, so a
    document's id does not depend on which of its neighbours are too short."""
    for k, doc in enumerate(chunks):
        if len(doc) >= min_chars:
            yield f"{prefix}#{k}", doc


def _until(docs: Docs, budget: int) -> Docs:
    """``docs`` until their UTF-8 size reaches ``budget`` bytes (the one that crosses it included); what
    comes after is never read."""
    used = 0
    for doc_id, doc in docs:
        yield doc_id, doc
        used += len(doc.encode())
        if used >= budget:
            return


def python_code(budget: int) -> Docs:
    """Standard-library source first; site-packages only tops it up when the budget asks for more."""
    return _until(_python_modules_docs(), budget)


def _python_modules_docs() -> Docs:
    root = _stdlib()
    for path in _stdlib_modules() + _site_packages_modules():
        src = _read_text(path)
        if not src:
            continue
        rel = path.relative_to(root) if path.is_relative_to(root) else path.name
        yield from _numbered(f"python_code/{rel}", chunk_blocks(python_blocks(src)))


_DEFS = (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def docstrings() -> Docs:
    """English prose about code: the standard library's docstrings, grouped per module."""
    root = _stdlib()
    for path in _stdlib_modules():
        src = _read_text(path)
        if not src:
            continue
        try:
            tree = ast.parse(src)
        except (SyntaxError, ValueError):
            continue
        texts = []
        # only definitions carry docstrings: descend through bodies, not every expression node
        # (a full ast.walk of the standard library is several times slower)
        stack: list[ast.AST] = [tree]
        while stack:
            node = stack.pop()
            doc = ast.get_docstring(node)  # type: ignore[arg-type]
            if doc and len(doc) >= 80:
                texts.append(doc.strip() + "\n\n")
            stack.extend(reversed([n for n in node.body if isinstance(n, _DEFS)]))  # type: ignore[attr-defined]
        yield from _numbered(f"docstrings/{path.relative_to(root)}", chunk_blocks(texts))


def reference_manual() -> Docs:
    """The language reference topics behind ``help('if')`` etc. (pydoc_data)."""
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return
    for name in sorted(topics):
        yield from _numbered(f"reference_manual/{name}", chunk_blocks(paragraphs(topics[name])))


def emails() -> Docs:
    """Real RFC 822 messages used as test data by the email package (needs the stdlib test suite)."""
    data = _stdlib() / "test" / "test_email" / "data"
    if not data.is_dir():
        return
    for path in sorted(data.glob("msg_*.txt")):
        text = _read_text(path)
        if not text:
            continue
        msg = email.message_from_string(text, policy=email.policy.compat32)
        if not msg.keys():  # not a message after all
            continue
        yield from _numbered(f"emails/{path.name}", chunk_blocks([text], target=MAX_DOC_CHARS), min_chars=100)


def c_headers(budget: int = C_HEADER_CAP) -> Docs:
    """C headers of the interpreter, then of installed extension packages (numpy, torch, ...)."""
    return _until(_header_docs(), budget)


def _header_docs() -> Docs:
    paths = sysconfig.get_paths()
    roots = [Path(paths["include"])] + [Path(paths[k]) for k in ("platlib", "purelib")]
    seen: set[Path] = set()
    for root in roots:
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*.h")):
            if path in seen:
                continue
            seen.add(path)
            text = _read_text(path)
            if not text:
                continue
            yield from _numbered(
                f"c_headers/{root.name}/{path.relative_to(root)}", chunk_blocks(paragraphs(text))
            )


_LICENSE_FILE = re.compile(r"(^|/)(LICEN[CS]E|COPYING|NOTICE|AUTHORS)[^/]*$", re.IGNORECASE)


def _dists() -> list[importlib.metadata.Distribution]:
    """Installed distributions by name, moemix itself left out: its METADATA body is this repo's README
    as of install time, which would make the corpus (and every demo result) depend on when the
    environment was created rather than on what is installed."""
    by_name = {}
    for d in importlib.metadata.distributions():
        name = (d.metadata.get("Name") or "").lower()
        if name and name != "moemix" and name not in by_name:
            by_name[name] = d
    return [by_name[n] for n in sorted(by_name)]


def licenses() -> Docs:
    """License/notice texts shipped in the installed distributions' metadata."""
    for dist in _dists():
        name = dist.metadata["Name"].lower()
        for f in sorted(dist.files or [], key=str):
            if ".dist-info/" not in str(f) and ".egg-info/" not in str(f):
                continue
            if not _LICENSE_FILE.search(str(f)):
                continue
            text = _read_text(Path(dist.locate_file(f)))
            if not text:
                continue
            yield from _numbered(f"licenses/{name}/{f}", chunk_blocks(paragraphs(text)))


def package_readmes() -> Docs:
    """Long descriptions (mostly Markdown READMEs) from the installed distributions' METADATA."""
    for dist in _dists():
        name = dist.metadata["Name"].lower()
        body = dist.metadata.get_payload() if hasattr(dist.metadata, "get_payload") else None
        body = body or dist.metadata.get("Description") or ""
        if not isinstance(body, str) or len(body) < MIN_DOC_CHARS:
            continue
        yield from _numbered(f"package_readmes/{name}", chunk_blocks(paragraphs(body)))


# --------------------------------------------------------------------------- build

FIXED_DOMAINS: dict[str, Callable[[], Docs]] = {
    "docstrings": docstrings,
    "reference_manual": reference_manual,
    "emails": emails,
    "c_headers": c_headers,
    "licenses": licenses,
    "package_readmes": package_readmes,
}


def _collect(gen: Docs, seen: set[bytes]) -> tuple[list[str], list[str], int]:
    """Materialize one domain, dropping exact repeats (e.g. the same Apache license in 30 packages)."""
    ids, texts, n_bytes = [], [], 0
    used_ids: set[str] = set()
    for doc_id, text in gen:
        h = hashlib.blake2b(text.encode(), digest_size=8).digest()
        if h in seen:
            continue
        seen.add(h)
        doc_id = unique_name(doc_id, used_ids, sep="~")  # same relative path in two roots: keep ids unique
        used_ids.add(doc_id)
        ids.append(doc_id)
        texts.append(text)
        n_bytes += len(text.encode())
    return ids, texts, n_bytes


def _build_into(out: Path, progress: bool = False) -> None:
    from tqdm.auto import tqdm

    seen: set[bytes] = set()
    stats: dict = {"version": BUILDER_VERSION, "python": sys.version, "domains": [], "docs": {}, "bytes": {}}
    names = list(FIXED_DOMAINS) + ["python_code"]
    total = 0
    for name in tqdm(names, desc="demo corpus", disable=not progress):
        if name == "python_code":
            gen = python_code(budget=max(TARGET_TOTAL_BYTES - total, 8_000_000))
        else:
            gen = FIXED_DOMAINS[name]()
        ids, texts, n_bytes = _collect(gen, seen)
        if not texts:
            continue
        table = pa.table({"text": texts, "source": [name] * len(texts), "id": ids})
        pq.write_table(table, out / f"{name}.parquet", compression="zstd")
        stats["domains"].append(name)
        stats["docs"][name] = len(texts)
        stats["bytes"][name] = n_bytes
        total += n_bytes
    stats["domains"].sort()
    stats["total_bytes"] = total
    if len(stats["domains"]) < MIN_DOMAINS:
        raise MoemixError(
            f"demo corpus: found only {len(stats['domains'])} domains in this Python installation "
            f"({', '.join(stats['domains'])}); need {MIN_DOMAINS}"
        )
    if total < MIN_TOTAL_BYTES:
        # a slim installation (no stdlib tests, few packages): still usable, just smaller
        logging.getLogger(__name__).warning(
            "demo corpus: only %.1f MB of text in this Python installation (expected >= %.0f MB)",
            total / 1e6,
            MIN_TOTAL_BYTES / 1e6,
        )
    write_json_atomic(out / STATS_NAME, stats)  # last: marks the directory complete
