"""A small labelled corpus of real text from this machine, for clustering tests and benchmarks.

Six sources of clearly different kinds of text, each cut into ~1 KB documents: Python source,
C headers, the Python language reference (pydoc topics), RFC 822 e-mails (stdlib test data),
license texts and package READMEs (dist-info METADATA). Deterministic: files are read in sorted
order and documents picked at even strides. Kept independent of ``pipeline.demo_corpus`` so the
clustering tests stay small and fast.
"""

from __future__ import annotations

import glob
import site
import sysconfig
from functools import lru_cache
from pathlib import Path

DOC_CHARS = 1000


def _read(path: str | Path) -> str:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def _chunks(text: str, size: int = DOC_CHARS) -> list[str]:
    """Cut on line boundaries into ~size-char documents; drop fragments too short to carry a topic."""
    out, cur, n = [], [], 0
    for line in text.splitlines():
        cur.append(line)
        n += len(line) + 1
        if n >= size:
            out.append("\n".join(cur))
            cur, n = [], 0
    if n >= size // 3:
        out.append("\n".join(cur))
    return [c for c in out if len(c.strip()) >= size // 3]


def _site() -> Path:
    return Path(site.getsitepackages()[0])


def _third_party_dist_infos() -> list[Path]:
    """Installed packages' metadata dirs, sorted, without moemix's own: its METADATA body is this
    repo's README as of install time, so including it made the corpus (and the NMI these tests
    measure, 0.77-0.86) change with every README edit and differ between checkouts."""
    return [p for p in sorted(_site().glob("*.dist-info")) if not p.name.lower().startswith("moemix-")]


def _python_code() -> list[str]:
    std = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in std.glob("*.py"))
    return [c for f in files for c in _chunks(_read(f))]


def _c_headers() -> list[str]:
    # system (libc) headers only: CPython's own headers are a different dialect (PyAPI_FUNC, long
    # comments) that forms a domain of its own and would make "C headers" two sources in one.
    inc = sorted(glob.glob("/usr/include/*.h"))
    return [c for f in inc for c in _chunks(_read(f))]


def _manual() -> list[str]:
    from pydoc_data.topics import topics

    return [c for k in sorted(topics) for c in _chunks(topics[k])]


def _email() -> list[str]:
    std = Path(sysconfig.get_paths()["stdlib"])
    files = sorted((std / "test" / "test_email" / "data").glob("msg_*.txt"))
    out = []
    for f in files:
        t = _read(f)
        out.extend(_chunks(t) or ([t] if len(t) > 200 else []))
    return out


def _licenses() -> list[str]:
    dists = _third_party_dist_infos()
    files = sorted(str(f) for d in dists for f in d.glob("LICENSE*"))
    files += sorted(str(f) for d in dists for f in d.glob("licenses/**/*"))
    seen, out = set(), []
    for f in files:
        if not Path(f).is_file():
            continue
        for c in _chunks(_read(f)):
            key = " ".join(c.split())
            if key not in seen:  # the same MIT/BSD text ships many times
                seen.add(key)
                out.append(c)
    return out


def _readmes() -> list[str]:
    out = []
    for f in (d / "METADATA" for d in _third_party_dist_infos()):
        text = _read(f)
        body = text.split("\n\n", 1)[1] if "\n\n" in text else ""
        out.extend(_chunks(body))
    return out


SOURCES = {
    "python_code": _python_code,
    "c_headers": _c_headers,
    "manual": _manual,
    "email": _email,
    "licenses": _licenses,
    "readmes": _readmes,
}


def _stride(docs: list[str], n: int) -> list[str]:
    if len(docs) <= n:
        return docs
    idx = [round(i * (len(docs) - 1) / (n - 1)) for i in range(n)]
    return [docs[i] for i in idx]


@lru_cache(maxsize=4)
def labelled_corpus(per_source: int = 250) -> tuple[tuple[str, ...], tuple[int, ...], tuple[str, ...]]:
    """(texts, labels, source names), interleaved so neither order nor position reveals the label."""
    texts, labels, names = [], [], []
    for li, (name, fn) in enumerate(SOURCES.items()):
        docs = _stride(fn(), per_source)
        if len(docs) < 20:
            continue
        names.append(name)
        texts.extend(docs)
        labels.extend([len(names) - 1] * len(docs))
        del li
    # deterministic interleave: sort by a hash of the text
    import hashlib

    order = sorted(range(len(texts)), key=lambda i: hashlib.md5(texts[i].encode()).hexdigest())
    return tuple(texts[i] for i in order), tuple(labels[i] for i in order), tuple(names)


def synthetic_docs(n: int, chars: int = DOC_CHARS, seed: int = 0) -> list[str]:
    """n ~chars-long documents recombined from the real corpus (for throughput/memory benchmarks)."""
    import random

    texts, _, _ = labelled_corpus()
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        t = texts[rng.randrange(len(texts))]
        start = rng.randrange(max(1, len(t) - chars // 2))
        doc = (t[start:] + "\n" + texts[rng.randrange(len(texts))])[:chars]
        out.append(doc)
    return out
