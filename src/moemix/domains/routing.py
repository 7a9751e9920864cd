"""Domain names and routing: label slugs, domain descriptions, and ``DomainAssigner``, which places new
documents exactly as a finished domains stage did (from its ``routing.json``)."""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from pathlib import Path

from moemix.domains.ingest import unique_name
from moemix.errors import MoemixError

ROUTING_NAME = "routing.json"


def slugify(value: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "_", value.lower()).strip("_")
    return s or "domain"


class SlugMap:
    """label value -> unique slug, in order of first appearance (so it is deterministic)."""

    def __init__(self, max_domains: int, what: str):
        self.map: dict[str, str] = {}
        self.used: set[str] = set()
        self.max = max_domains
        self.what = what

    def __call__(self, label: str) -> str:
        slug = self.map.get(label)
        if slug is None:
            if len(self.map) >= self.max:
                raise MoemixError(
                    f"{self.what} has more than max_domains={self.max} distinct values (e.g. "
                    f"{label[:40]!r}); "
                    "is it really a domain label?"
                )
            slug = unique_name(slugify(label), self.used)
            self.map[label] = slug
            self.used.add(slug)
        return slug


# not cluster._top_terms (another regex and score): sharing one would change cluster domain names or
# stats.json's terms
_TERM = re.compile(r"(?u)\b[a-zA-Z][a-zA-Z0-9_]{2,}\b")


def describe_domains(samples: dict[str, list[str]], n_terms: int = 8, n_examples: int = 3, chars: int = 240):
    """Most distinctive terms (class TF-IDF over per-domain samples) and a few short snippets."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    tf = {d: Counter(w.lower() for t in texts for w in _TERM.findall(t)) for d, texts in samples.items()}
    df: Counter[str] = Counter()
    for c in tf.values():
        df.update(c.keys())
    n = len(tf)
    out = {}
    for d, c in tf.items():
        total = sum(c.values()) or 1
        scored = sorted(
            ((cnt / total) * math.log(1 + n / df[w]), w)
            for w, cnt in c.items()
            if w not in ENGLISH_STOP_WORDS and cnt >= 2
        )
        terms = [w for _, w in sorted(scored, key=lambda s: (-s[0], s[1]))[:n_terms]]
        examples = [" ".join(t.split())[:chars] for t in samples[d][:n_examples]]
        out[d] = {"top_terms": terms, "examples": examples}
    return out


class DomainAssigner:
    """Place new documents into the domains of a finished domains stage, as the stage itself did.

    ``assign(texts, labels)`` returns a domain name per text, or None where the document would
    have gone to a domain that was dropped (too small) or carries a label the stage never saw.
    Labels matter in label and label+cluster modes (pass the source name for an unlabelled
    source in label mode); cluster mode ignores them.
    """

    def __init__(self, stage_dir: str | Path):
        self.dir = Path(stage_dir)
        path = self.dir / ROUTING_NAME
        if not path.exists():
            raise MoemixError(f"not a domains stage directory (missing {ROUTING_NAME}): {self.dir}")
        r = json.loads(path.read_text())
        self.mode: str = r["mode"]
        self.labels: dict[str, str] = r["labels"]
        self.models: dict[str, dict] = r["models"]
        self.domains: list[str] = r["domains"]
        self._loaded: dict[str, object] = {}

    def _model(self, group: str):
        from moemix.domains.cluster import ClusterModel

        if group not in self._loaded:
            self._loaded[group] = ClusterModel.load(self.dir / self.models[group]["dir"])
        return self._loaded[group]

    def assign(self, texts: list[str], labels: list[str | None] | None = None) -> list[str | None]:
        if labels is None:
            labels = [None] * len(texts)
        if len(labels) != len(texts):
            raise ValueError(f"{len(texts)} texts but {len(labels)} labels")
        out: list[str | None] = [None] * len(texts)
        groups: dict[str, list[int]] = {}
        for i, label in enumerate(labels):
            if self.mode == "cluster" or label is None:
                if self.mode != "label" and "" in self.models:
                    groups.setdefault("", []).append(i)
                continue
            slug = self.labels.get(str(label))
            if slug is None:
                continue
            if slug in self.models:
                groups.setdefault(slug, []).append(i)
            else:
                out[i] = slug
        for group, idx in groups.items():
            names = self.models[group]["names"]
            for i, d in zip(idx, self._model(group).assign([texts[i] for i in idx])):
                out[i] = names[int(d)]
        kept = set(self.domains)
        return [d if d in kept else None for d in out]
