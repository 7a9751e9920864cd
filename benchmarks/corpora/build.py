"""Build evaluation corpora of real text from Debian packages: ``prose`` and ``code``, and ``extra``
(sources that only join another corpus's: the APT package index of ``lopsided.yaml``, dpkg's
MD5 manifests of ``checksums.yaml``), ``languages`` (man pages in six more languages) and ``heldout``
(code and documentation of four more languages, assembled after the settings were fixed).

Each corpus has six or seven clearly different sources (domains), 25-40 MB of text in all, written as
one JSONL file per source (``<source>.jsonl``, one ``{"id", "text", "source"}`` object a line)
plus ``.manifest.json`` (package versions, per-source counts). Documents are 200-8000 characters:
files are cut on paragraph breaks (prose) or on top-level definitions (a blank line followed by a
line at column 0, for code), blocks are joined greedily up to ~3000 characters, and a block over
8000 characters is cut on blank lines, then lines. A source bigger than its cap is thinned evenly:
first every k-th file, then every n-th document, so the kept part spans the whole source; one file
gives at most 3% of its source's cap (its first documents). Code files that are machine-generated
(a "Code generated ... DO NOT EDIT"-style notice) or mostly numbers (charset / Unicode tables) are
left out. Files that are binary or not valid UTF-8 are skipped.

Nothing is random and every file list is sorted: the same installed packages give byte-identical
output. Only the Python standard library is needed (any python3 >= 3.9), plus the programs the
packages ship (``bible``, ``Rscript``, ``groff``). Targets Debian 12 (bookworm) package names.

  bash benchmarks/corpora/install.sh [prose|code|extra|languages]       # apt-get the packages (root or sudo)
  python benchmarks/corpora/build.py prose --out bench_out/corpora/prose
  python benchmarks/corpora/build.py code --out bench_out/corpora/code
  python benchmarks/corpora/build.py extra --out bench_out/corpora/extra
  python benchmarks/corpora/build.py languages --out bench_out/corpora/languages
  python benchmarks/corpora/build.py heldout --out bench_out/corpora/heldout
  python benchmarks/corpora/build.py code --list-packages
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

MB = 1_000_000
TARGET_CHARS = 3000
MAX_CHARS = 8000
MIN_CHARS = 200
# budget for the file-level pre-selection, as a multiple of a source's cap (the document-level
# thinning then trims to the cap; some text is lost to tiny documents and skipped files)
FILE_BUDGET = 1.5
# no single file may give more than this share of its source's cap (its first documents are kept)
FILE_SHARE = 0.03
# code files where numeric literals are over this share of the non-blank characters are data tables
DATA_SHARE = 0.2

BLANK = re.compile(r"\n(?:[ \t]*\n)+")  # a paragraph break
TOPLEVEL = re.compile(r"\n(?:[ \t]*\n)+(?=\S)")  # a blank line, then a line at column 0
GENERATED = re.compile(r"(?i)code generated|automatically generated|do not edit")
OVERSTRIKE = re.compile(r".\x08")
CONTROL = re.compile(r"[\x00-\x08\x0b\x0e-\x1f\x7f]")
NUMBER = re.compile(r"\b(?:0[xX][0-9a-fA-F]+|16#[0-9a-fA-F]+|\d+)\b")

Doc = tuple[str, str]  # (origin: file or book the text came from, text)


@dataclass(frozen=True)
class Source:
    name: str
    packages: tuple[str, ...]
    cap_mb: float
    docs: Callable[[Source], Iterator[Doc]]
    about: str
    tools: tuple[str, ...] = ()  # packages whose programs are run, not whose files are read

    @property
    def cap(self) -> int:
        return int(self.cap_mb * MB)


# --------------------------------------------------------------------------- chunking


def pack(
    blocks: Iterable[str], sep: str, target: int = TARGET_CHARS, limit: int = MAX_CHARS
) -> Iterator[str]:
    """Join consecutive blocks (each <= ``limit``) with ``sep`` into texts of ~``target`` chars."""
    buf: list[str] = []
    size = 0
    for b in blocks:
        add = len(b) + (len(sep) if buf else 0)
        if buf and size + add > limit:
            yield sep.join(buf)
            buf, size, add = [], 0, len(b)
        buf.append(b)
        size += add
        if size >= target:
            yield sep.join(buf)
            buf, size = [], 0
    if buf:
        yield sep.join(buf)


def pieces(block: str, limit: int = MAX_CHARS, level: int = 0) -> Iterator[str]:
    """``block`` itself, or parts of it <= ``limit``: cut on blank lines, then lines, then hard."""
    if len(block) <= limit:
        yield block
        return
    if level >= 2:
        for i in range(0, len(block), limit):
            yield block[i : i + limit]
        return
    parts, sep = (BLANK.split(block), "\n\n") if level == 0 else (block.split("\n"), "\n")
    subs = (p for part in parts for p in pieces(part, limit, level + 1))
    yield from pack(subs, sep, target=limit, limit=limit)


def chunk(blocks: Iterable[str], sep: str = "\n\n") -> list[str]:
    """Documents from a sequence of blocks; ones under MIN_CHARS are dropped."""
    blocks = (b.strip("\n") for b in blocks)
    out = pack((p for b in blocks if b.strip() for p in pieces(b)), sep)
    return [d for d in out if len(d.strip()) >= MIN_CHARS]


def chunk_text(text: str, boundary: re.Pattern = BLANK) -> list[str]:
    return chunk(boundary.split(text))


def head(docs: list[str], limit: int) -> list[str]:
    """The first documents, up to ``limit`` bytes in all (at least one)."""
    out, size = [], 0
    for d in docs:
        size += len(d.encode())
        if out and size > limit:
            break
        out.append(d)
    return out


def thin(docs: list[Doc], cap: int) -> list[Doc]:
    """Every n-th document (fractional n, evenly spread) so that the kept ones total ~``cap`` bytes."""
    total = sum(len(t.encode()) for _, t in docs)
    if total <= cap:
        return docs
    r = cap / total
    return [d for i, d in enumerate(docs) if int((i + 1) * r) > int(i * r)]


# --------------------------------------------------------------------------- files


def package_files(packages: Iterable[str], include: str, exclude: str | None = None) -> list[str]:
    """Sorted regular files (no symlinks) that ``packages`` installed, filtered by regexes."""
    out = subprocess.run(["dpkg-query", "-L", *packages], check=True, capture_output=True, text=True).stdout
    inc, exc = re.compile(include), re.compile(exclude) if exclude else None
    files = set()
    for line in out.splitlines():
        p = line.strip()
        if inc.search(p) and not (exc and exc.search(p)) and os.path.isfile(p) and not os.path.islink(p):
            files.add(p)
    return sorted(files)


def text_size(path: str) -> int:
    """Uncompressed size: a .gz file's ISIZE trailer, else the file size."""
    if path.endswith(".gz"):
        with open(path, "rb") as f:
            f.seek(-4, os.SEEK_END)
            return int.from_bytes(f.read(4), "little")
    return os.path.getsize(path)


def spread(items: list[tuple[str, int]], budget: float) -> list[str]:
    """Every k-th of the (key, size) items so that they still total >= ``budget`` (all when small)."""
    total = sum(s for _, s in items)
    k = max(1, int(total // budget)) if budget > 0 else 1
    return [key for key, _ in items[::k]]


def decode(data: bytes) -> str | None:
    """Strict UTF-8 text with LF line ends, or None for binary / undecodable data."""
    if b"\x00" in data:
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return text.replace("\r\n", "\n")


def read_text(path: str) -> str | None:
    with open(path, "rb") as f:
        data = f.read()
    if path.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError):
            return None
    return decode(data)


def relative(paths: list[str]) -> Callable[[str], str]:
    root = os.path.commonpath(paths) if len(paths) > 1 else os.path.dirname(paths[0]) if paths else "/"
    return lambda p: os.path.relpath(p, root)


def generated(path: str) -> bool:
    """A machine-generated file (tables, rewrite rules), by the usual notice near its top."""
    with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
        return bool(GENERATED.search(f.read(1000).decode("utf-8", "replace")))


def data_table(text: str) -> bool:
    """Mostly numbers (character maps, Unicode tables, primes): not what a code domain is about."""
    digits = sum(len(m) for m in NUMBER.findall(text))
    return digits > DATA_SHARE * max(1, len(text) - sum(text.count(c) for c in " \t\n"))


def file_docs(src: Source, files: list[str], boundary: re.Pattern, is_code: bool = False) -> Iterator[Doc]:
    if is_code:  # before the selection, so the budget is spent on hand-written files
        files = [f for f in files if not generated(f)]
    files = spread([(f, text_size(f)) for f in files], FILE_BUDGET * src.cap)
    rel = relative(files)
    for f in files:
        text = read_text(f)
        if text is None or (is_code and data_table(text)):
            continue
        name = rel(f).removesuffix(".gz")
        for d in head(chunk_text(text, boundary), int(FILE_SHARE * src.cap)):
            yield name, d


def run(cmd: list[str], **kw) -> str:
    env = {**os.environ, "LC_ALL": "C.UTF-8", "LANG": "C.UTF-8"}
    return subprocess.run(cmd, check=True, capture_output=True, env=env, **kw).stdout


# --------------------------------------------------------------------------- prose sources

AUSTEN_BOOKS = (
    "sensesensibility",
    "prideprejudice",
    "mansfieldpark",
    "emma",
    "northangerabbey",
    "persuasion",
)


def novels(src: Source) -> Iterator[Doc]:
    """Jane Austen's six novels (Project Gutenberg text in the R package janeaustenr)."""
    with tempfile.TemporaryDirectory() as d:
        script = (
            "suppressMessages(library(janeaustenr)); d <- commandArgs(TRUE)[1]; "
            f"for (b in c({', '.join(repr(b) for b in AUSTEN_BOOKS)})) "
            "writeLines(enc2utf8(get(b)), file.path(d, paste0(b, '.txt')), useBytes = TRUE)"
        )
        run(["Rscript", "--vanilla", "-e", script, d])
        for b in AUSTEN_BOOKS:
            text = decode(Path(d, f"{b}.txt").read_bytes())
            for doc in chunk_text(text or ""):
                yield b, doc


def bible(src: Source) -> Iterator[Doc]:
    """The King James Bible: chapters joined within a book, long chapters cut between verses."""
    out = run(["bible", "-l", "100000", "gen1:1-rev22:21"], cwd=tempfile.gettempdir()).decode("utf-8")
    books: dict[str, list[str]] = {}
    order: list[str] = []
    cur: list[str] | None = None
    for line in out.split("\n"):
        if not line.strip():
            continue
        if not line.startswith(" "):  # "Psalms 119"
            book = line.rsplit(" ", 1)[0]
            if book not in books:
                books[book] = []
                order.append(book)
            cur = [line, ""]
            books[book].append(cur)
        elif cur is not None:
            cur.append(line.strip())
    for book in order:
        chapters = ["\n".join(ch) for ch in books[book]]
        for doc in chunk(chapters):
            yield book.replace(" ", "_"), doc


def dictionary(src: Source) -> Iterator[Doc]:
    """GCIDE (Webster's 1913 + later additions), from the dictd database, entries in file order."""
    (path,) = package_files(src.packages, r"/gcide\.dict\.dz$")
    with gzip.open(path, "rb") as f:
        data = f.read()
    entries = []
    for raw in re.split(rb"\n\n(?=\S)", data):
        text = decode(raw)
        if text is None or text.lstrip().startswith("00-database") or "Begin file" in text[:200]:
            continue
        entries.append(text)
    for d in chunk(entries):  # ~40 MB in all: build() thins it evenly over the alphabet
        head = d.lstrip()[:1].lower()
        yield (head if head.isalpha() else "_"), d


def doc_files(include: str, exclude: str | None = None) -> Callable[[Source], Iterator[Doc]]:
    """Prose (documentation) files, cut on paragraph breaks."""

    def make(src: Source) -> Iterator[Doc]:
        yield from file_docs(src, package_files(src.packages, include, exclude), BLANK)

    return make


def manpages(src: Source) -> Iterator[Doc]:
    """Linux man-pages (sections 1-8, mostly 2, 3 and 7), rendered to plain UTF-8 text with groff."""
    return rendered_manpages(src, r"^/usr/share/man/man[1-9]/[^/]+\.gz$")


def translated_manpages(lang: str) -> Callable[[Source], Iterator[Doc]]:
    """The manpages-l10n translations into ``lang`` (the same pages in another language)."""

    def docs(src: Source) -> Iterator[Doc]:
        return rendered_manpages(src, rf"^/usr/share/man/{lang}/man[1-9]/[^/]+\.gz$")

    return docs


def rendered_manpages(src: Source, include: str) -> Iterator[Doc]:
    files = package_files(src.packages, include)
    files = spread([(f, text_size(f)) for f in files], FILE_BUDGET * src.cap)
    for f in files:
        roff = read_text(f)
        if roff is None:
            continue
        body = [ln for ln in roff.split("\n") if ln.strip() and not ln.startswith(('.\\"', "'\\\""))]
        if not body or body[0].startswith(".so "):  # a link to another page
            continue
        cmd = ["groff", "-k", "-t", "-man", "-Tutf8", "-P-cbou", "-rLL=78n", "-rHY=0"]
        try:
            out = run(cmd, input=roff.encode())
        except subprocess.CalledProcessError:
            continue
        text = decode(out)
        if text is None:
            continue
        text = "\n".join(ln.rstrip() for ln in text.split("\n"))
        for d in head(chunk_text(text), int(FILE_SHARE * src.cap)):
            yield os.path.basename(f).removesuffix(".gz"), d


def fortunes(src: Source) -> Iterator[Doc]:
    """fortune(6) cookies: quotations, jokes, poems; consecutive cookies of one file per document."""
    files = package_files(src.packages, r"^/usr/share/games/fortunes/[^/]+$", r"\.(dat|u8)$")
    for f in files:
        text = read_text(f)
        if text is None:
            continue
        text = OVERSTRIKE.sub("", text)
        cookies = [c.strip("\n") for c in re.split(r"\n%\n", text) if not CONTROL.search(c)]
        for d in chunk(cookies, sep="\n%\n"):
            yield os.path.basename(f), d


def apt_index(src: Source) -> Iterator[Doc]:
    """The APT package index (``Packages`` files under /var/lib/apt/lists, as the last ``apt-get update``
    left them): one stanza per binary package, consecutive stanzas per document. Formulaic fields a
    model learns fast next to checksums it cannot learn at all: the kind of low-yield text web crawls
    are full of."""
    lists = sorted(glob.glob("/var/lib/apt/lists/*_Packages*"))
    if not lists:
        raise SystemExit("apt_index: no Packages files under /var/lib/apt/lists; run 'apt-get update' first")
    for f in lists:
        # apt-helper decompresses whichever of lz4/gz/xz/zstd the lists were written in
        raw = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", f], capture_output=True, check=True)
        text = decode(raw.stdout)
        if text is None:
            continue
        yield from ((os.path.basename(f), d) for d in chunk(text.strip("\n").split("\n\n")))


def checksums(src: Source) -> Iterator[Doc]:
    """dpkg's per-package file manifests (``/var/lib/dpkg/info/*.md5sums``): an MD5 digest and a path a
    line. The paths are learnable; the digests are uniformly random hex, so about 40% of the text stays at
    its entropy however much of it a model sees: the unlearnable kind of text (hashes, keys, encoded
    blobs) real crawls carry, and the case where a domain's own loss stops paying for its tokens."""
    files = sorted(glob.glob("/var/lib/dpkg/info/*.md5sums"))
    if not files:
        raise SystemExit("checksums: no /var/lib/dpkg/info/*.md5sums files (not a dpkg system?)")
    spread_files = spread([(f, os.path.getsize(f)) for f in files], FILE_BUDGET * src.cap)
    for f in spread_files:
        text = read_text(f)
        if text is None:
            continue
        lines = text.strip("\n").split("\n")
        yield from ((os.path.basename(f), d) for d in head(chunk(lines, sep="\n"), int(FILE_SHARE * src.cap)))


# --------------------------------------------------------------------------- code sources


def code(include: str, exclude: str | None = None) -> Callable[[Source], Iterator[Doc]]:
    def docs(src: Source) -> Iterator[Doc]:
        files = package_files(src.packages, include, exclude)
        yield from file_docs(src, files, TOPLEVEL, is_code=True)

    return docs


def glibc(src: Source) -> Iterator[Doc]:
    """C: the .c files of the GNU C library source tarball that glibc-source ships."""
    (tarball,) = package_files(src.packages, r"^/usr/src/glibc/glibc-[^/]+\.tar\.xz$")
    texts: dict[str, str] = {}
    with tarfile.open(tarball, "r:xz") as tf:
        for m in tf:
            if m.isfile() and m.name.endswith(".c"):
                f = tf.extractfile(m)
                text = decode(f.read()) if f else None
                if text is not None and not GENERATED.search(text[:1000]) and not data_table(text):
                    texts[m.name] = text
    names = spread([(n, len(texts[n])) for n in sorted(texts)], FILE_BUDGET * src.cap)
    for n in names:
        for d in head(chunk_text(texts[n], TOPLEVEL), int(FILE_SHARE * src.cap)):
            yield n.split("/", 1)[-1], d


# --------------------------------------------------------------------------- corpora

CORPORA: dict[str, tuple[Source, ...]] = {
    "prose": (
        Source("novels", ("r-cran-janeaustenr",), 8, novels, "Jane Austen's six novels", ("r-base-core",)),
        Source("bible", ("bible-kjv-text",), 8, bible, "King James Bible", ("bible-kjv",)),
        Source("dictionary", ("dict-gcide",), 6, dictionary, "GCIDE dictionary entries (Webster 1913)"),
        Source(
            "kernel_docs",
            ("linux-doc-6.1",),
            8,
            doc_files(r"/Documentation/.*\.rst\.gz$", r"/html/"),
            "Linux kernel Documentation/ (reStructuredText)",
        ),
        Source("perl_pod", ("perl-doc",), 5, doc_files(r"/pod/.*\.pod$"), "Perl manual pages (POD source)"),
        Source(
            "manpages",
            ("manpages", "manpages-dev"),
            5,
            manpages,
            "Linux man-pages sections 1-8, rendered by groff",
            ("groff-base",),
        ),
        Source(
            "fortunes", ("fortunes", "fortunes-min"), 8, fortunes, "fortune cookies: quotes, jokes, poems"
        ),
    ),
    # man pages in six more languages (benchmarks/corpora/languages.yaml adds prose's English ones)
    "languages": tuple(
        Source(
            f"manpages_{lang}",
            (f"manpages-{lang}",),
            5,
            translated_manpages(lang),
            f"man pages translated into {name} (manpages-l10n), rendered by groff",
            ("groff-base",),
        )
        for lang, name in [
            ("de", "German"),
            ("fr", "French"),
            ("es", "Spanish"),
            ("it", "Italian"),
            ("pl", "Polish"),
            ("ru", "Russian"),
        ]
    ),
    # sources that only sit next to another corpus's (benchmarks/corpora/lopsided.yaml)
    "extra": (
        Source("apt_index", ("apt",), 8, apt_index, "APT package index (Packages stanzas)"),
        Source("checksums", ("dpkg",), 6, checksums, "dpkg file manifests (MD5 digest + path lines)"),
    ),
    "code": (
        Source(
            "go",
            ("golang-1.19-src",),
            8,
            code(r"/src/.*\.go$", r"_test\.go$|/testdata/"),
            "Go standard library",
        ),
        Source(
            "rust",
            ("rust-src",),
            6,
            code(r"^/usr/src/rustc-[^/]+/(library|compiler)/.*\.rs$", r"/tests?/|/benches/"),
            "Rust standard library and compiler",
        ),
        Source("c", ("glibc-source",), 5, glibc, "GNU C library sources"),
        Source("erlang", ("erlang-src",), 4, code(r"/src/.*\.[eh]rl$", r"/test/"), "Erlang/OTP libraries"),
        Source("perl", ("perl-modules-5.36",), 3, code(r"\.pm$", r"/unicore/"), "Perl core modules"),
        Source("ruby", ("libruby3.1",), 3, code(r"\.rb$"), "Ruby standard library and bundled gems"),
    ),
    # assembled in session 23, after every proxy, fit and propose setting had been fixed, and run once
    # as is: a corpus nothing was tuned on (docs/benchmarks/mixture_quality.md, "Session 23"). Two
    # pairs of related sources (Python code and its docs; Emacs Lisp and Scheme) and two loners.
    "heldout": (
        Source(
            "python",
            ("libpython3.11-minimal", "libpython3.11-stdlib"),
            8,
            code(r"^/usr/lib/python3\.11/.*\.py$", r"/tests?/|/idle_test/|/test_[^/]*\.py$"),
            "Python 3.11 standard library",
        ),
        Source(
            "python_docs",
            ("python3.11-doc",),
            6,
            doc_files(r"/html/_sources/.*\.rst\.txt$"),
            "Python 3.11 documentation (reStructuredText sources)",
        ),
        Source("elisp", ("emacs-el",), 6, code(r"/lisp/.*\.el\.gz$", r"/obsolete/"), "Emacs Lisp sources"),
        Source("scheme", ("guile-3.0-libs",), 4, code(r"^/usr/share/guile/.*\.scm$"), "GNU Guile modules"),
        Source("tcl", ("tcllib",), 5, code(r"^/usr/share/tcltk/.*\.tcl$", r"/tests?/"), "Tcllib libraries"),
        Source("vim_help", ("vim-runtime",), 5, doc_files(r"/vim90/doc/.*\.txt$"), "Vim's help files"),
    ),
}


def packages(corpus: str) -> list[str]:
    return sorted({p for s in CORPORA[corpus] for p in (*s.packages, *s.tools)})


def installed_versions(pkgs: list[str]) -> dict[str, str | None]:
    """package -> installed version, or None where it is not installed."""
    if shutil.which("dpkg-query") is None:
        return dict.fromkeys(pkgs)
    res = subprocess.run(
        ["dpkg-query", "-W", "-f", "${Package} ${db:Status-Status} ${Version}\n", *pkgs],
        capture_output=True,
        text=True,
    )
    got = {}
    for line in res.stdout.splitlines():
        parts = line.split()
        if len(parts) == 3 and parts[1] == "installed":
            got[parts[0].split(":")[0]] = parts[2]
    return {p: got.get(p) for p in pkgs}


def with_ids(src: Source, docs: Iterable[Doc]) -> list[Doc]:
    """(id, text): ``<source>/<origin>#<n>``, n counting the chunks of one origin from 0."""
    seen: dict[str, int] = {}
    out = []
    for origin, text in docs:
        n = seen[origin] = seen.get(origin, -1) + 1
        out.append((f"{src.name}/{origin}#{n}", text))
    return out


def write_jsonl(path: Path, src: Source, docs: list[Doc]) -> int:
    tmp = path.with_name(f".{path.name}.tmp")
    nbytes = 0
    with open(tmp, "w", encoding="utf-8", newline="\n") as f:
        for doc_id, text in docs:
            f.write(json.dumps({"id": doc_id, "text": text, "source": src.name}, ensure_ascii=False) + "\n")
            nbytes += len(text.encode())
    os.replace(tmp, path)
    return nbytes


def build(corpus: str, out: Path, only: list[str] | None = None) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    versions = installed_versions(packages(corpus))
    stats: dict = {"corpus": corpus, "packages": versions, "sources": {}}
    print(f"{'source':<12} {'docs':>7} {'MB':>7}  mean chars", flush=True)
    for src in CORPORA[corpus]:
        if only and src.name not in only:
            continue
        docs = thin(with_ids(src, src.docs(src)), src.cap)
        nbytes = write_jsonl(out / f"{src.name}.jsonl", src, docs)
        stats["sources"][src.name] = {"docs": len(docs), "bytes": nbytes, "about": src.about}
        mean = sum(len(t) for _, t in docs) / max(1, len(docs))
        print(f"{src.name:<12} {len(docs):>7} {nbytes / MB:>7.2f}  {mean:>6.0f}", flush=True)
    total_docs = sum(s["docs"] for s in stats["sources"].values())
    total = sum(s["bytes"] for s in stats["sources"].values())
    stats["total_docs"], stats["total_bytes"] = total_docs, total
    print(f"{'total':<12} {total_docs:>7} {total / MB:>7.2f}  -> {out}", flush=True)
    if not only:
        (out / ".manifest.json").write_text(json.dumps(stats, indent=2, sort_keys=True) + "\n")
    return stats


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("corpus", choices=sorted(CORPORA))
    ap.add_argument("--out", type=Path, help="output directory (one <source>.jsonl per source)")
    ap.add_argument("--only", action="append", help="build just this source (repeatable)")
    ap.add_argument("--list-packages", action="store_true", help="print the Debian packages needed, and exit")
    args = ap.parse_args(argv)
    if args.list_packages:
        print(" ".join(packages(args.corpus)))
        return 0
    if args.out is None:
        ap.error("--out is required")
    missing = [p for p, v in installed_versions(packages(args.corpus)).items() if v is None]
    if missing:
        print(
            f"missing Debian packages for the {args.corpus} corpus; install them with:\n"
            f"  apt-get install -y --no-install-recommends {' '.join(missing)}\n"
            f"(or: bash benchmarks/corpora/install.sh {args.corpus})",
            file=sys.stderr,
        )
        return 2
    build(args.corpus, args.out, args.only)
    return 0


if __name__ == "__main__":
    sys.exit(main())
