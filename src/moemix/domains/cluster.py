"""CLIMB-style clustering of unlabelled text into mixture domains.

Fit: embed a sample (``pipeline.embed``), k-means it into many fine clusters, merge the fine centroids
into ``n_domains`` super-clusters by size-weighted agglomerative clustering (Ward by default: the merge
that raises the k-means objective least), fold domains smaller than ``min_domain_fraction`` into their
nearest neighbour, then name each domain by its most distinctive terms (class-based TF-IDF) and keep a
few representative snippets so a human can check what each domain is.

Assign: embed, nearest fine centroid (cosine), that centroid's domain. Fine centroids rather than
domain means are used so a domain keeps the non-convex shape its fine clusters give it.

Everything is deterministic for a seed; a document's assignment does not depend on the batch it is in.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from moemix._io import write_json_atomic
from moemix.domains.embed import EmbedConfig, Embedder, normalize_rows, save_npy
from moemix.errors import MoemixError

MODEL_FILE = "cluster_model.json"  # written last: its presence marks a complete saved model
CENTROIDS_FILE = "fine_centroids.npy"
EMBEDDER_DIR = "embedder"
TERM_PATTERN = r"(?u)\b[a-zA-Z][a-zA-Z0-9]{2,}\b"


@dataclass
class ClusterConfig:
    n_domains: int = 8
    n_fine_clusters: int = 64
    # Documents the embedder, k-means and names are fitted on (a seeded uniform sample of the corpus).
    sample_size: int = 20000
    # Domains with a smaller share of the sample are folded into their nearest domain, so the final
    # number of domains can be below n_domains.
    min_domain_fraction: float = 0.01
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    # How fine clusters merge into domains: "ward" (size-weighted, k-means-consistent) or "average"
    # (size-weighted mean cosine distance).
    linkage: Literal["ward", "average"] = "ward"
    # Fine clusters weigh size**power in the merge. 1 = plain Ward; lower values stop a large, internally
    # varied source from staying split while small coherent ones get absorbed (0.5 measured best on the
    # labelled test corpus, see docs/benchmarks/cluster.md).
    size_weight_power: float = 0.5
    # k-means backend: "auto" = sklearn KMeans up to 50k sample docs, MiniBatchKMeans above (faiss if
    # installed); or force one.
    kmeans: Literal["auto", "kmeans", "minibatch", "faiss"] = "auto"
    n_init: int = 3
    n_top_terms: int = 8
    n_examples: int = 3
    example_chars: int = 240

    def validate(self) -> None:
        self.embed.validate()
        if self.n_domains < 1:
            raise ValueError(f"n_domains: must be >= 1, got {self.n_domains}")
        if self.n_fine_clusters < self.n_domains:
            raise ValueError(f"n_fine_clusters: {self.n_fine_clusters} is below n_domains={self.n_domains}")
        if self.sample_size < self.n_fine_clusters:
            raise ValueError(
                f"sample_size: {self.sample_size} is below n_fine_clusters={self.n_fine_clusters}"
            )
        if not 0.0 <= self.min_domain_fraction < 1.0:
            raise ValueError(f"min_domain_fraction: must be in [0, 1), got {self.min_domain_fraction}")
        if not 0.0 <= self.size_weight_power <= 1.0:
            raise ValueError(f"size_weight_power: must be in [0, 1], got {self.size_weight_power}")
        if self.n_init < 1:
            raise ValueError(f"n_init: must be >= 1, got {self.n_init}")


@dataclass
class DomainInfo:
    name: str
    top_terms: list[str]
    examples: list[str]
    share: float  # fraction of the fitting sample assigned to this domain
    n_fine: int  # fine clusters merged into it


class ClusterModel:
    """Fitted embedder + fine centroids + fine->domain map; assigns any text to a domain index."""

    def __init__(
        self,
        embedder: Embedder,
        centroids: np.ndarray,
        fine_to_domain: np.ndarray,
        domains: list[DomainInfo],
        cfg: ClusterConfig,
        meta: dict[str, Any] | None = None,
    ) -> None:
        self.embedder = embedder
        self.centroids = np.ascontiguousarray(centroids, dtype=np.float32)
        self.fine_to_domain = np.asarray(fine_to_domain, dtype=np.int64)
        self.domains = domains
        self.cfg = cfg
        self.meta = meta or {}
        self._centroids64 = self.centroids.astype(np.float64).T.copy()

    @property
    def domain_names(self) -> list[str]:
        return [d.name for d in self.domains]

    @property
    def n_domains(self) -> int:
        return len(self.domains)

    def assign_embeddings(self, emb: np.ndarray) -> np.ndarray:
        # float64 scores: near-ties between centroids must not flip with BLAS blocking / batch size.
        scores = np.asarray(emb, dtype=np.float64) @ self._centroids64
        return self.fine_to_domain[scores.argmax(axis=1)]

    def assign(self, texts: list[str]) -> np.ndarray:
        """Domain index (int64) per text."""
        if not texts:
            return np.zeros(0, dtype=np.int64)
        return self.assign_embeddings(self.embedder.embed(list(texts)))

    def describe(self) -> list[dict]:
        return [{"id": i, **asdict(d)} for i, d in enumerate(self.domains)]

    def save(self, dir: Path) -> None:
        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        self.embedder.save(dir / EMBEDDER_DIR)
        save_npy(dir / CENTROIDS_FILE, self.centroids)
        write_json_atomic(
            dir / MODEL_FILE,
            {
                "format": 1,
                "config": asdict(self.cfg),
                "fine_to_domain": self.fine_to_domain.tolist(),
                "domains": [asdict(d) for d in self.domains],
                "meta": self.meta,
            },
        )

    @classmethod
    def load(cls, dir: Path) -> ClusterModel:
        from moemix.configtools import from_dict

        dir = Path(dir)
        path = dir / MODEL_FILE
        if not path.exists():
            raise MoemixError(f"cluster: {path} not found (no saved cluster model in {dir})")
        info = json.loads(path.read_text())
        cfg = from_dict(ClusterConfig, info["config"], "cluster_model.config")
        embedder = Embedder.load(dir / EMBEDDER_DIR)
        centroids = np.load(dir / CENTROIDS_FILE)
        domains = [DomainInfo(**d) for d in info["domains"]]
        return cls(embedder, centroids, np.array(info["fine_to_domain"]), domains, cfg, info.get("meta"))


# ---------------------------------------------------------------------------------------------- fitting
def fit_cluster_model(
    texts: list[str], cfg: ClusterConfig, seed: int = 0, progress: bool = False
) -> ClusterModel:
    cfg.validate()
    n = len(texts)
    if n < cfg.n_fine_clusters:
        raise MoemixError(
            f"cluster: {n} documents but n_fine_clusters={cfg.n_fine_clusters}; lower it or add data"
        )
    rng = np.random.default_rng(seed)
    if n > cfg.sample_size:
        idx = np.sort(rng.choice(n, size=cfg.sample_size, replace=False))
        sample = [texts[i] or "" for i in idx]
    else:
        sample = [t or "" for t in texts]

    embedder = Embedder(cfg.embed).fit(sample, seed=seed)
    emb = _embed_batched(embedder, sample, progress, "embed sample")

    centroids = _kmeans(emb, cfg, seed)
    centroids = normalize_rows(centroids)
    fine_labels = (emb.astype(np.float64) @ centroids.astype(np.float64).T).argmax(axis=1)
    sizes = np.bincount(fine_labels, minlength=len(centroids)).astype(np.float64)

    groups = _merge(centroids, sizes**cfg.size_weight_power, cfg.n_domains, cfg.linkage)
    groups = _fold_tiny(centroids, sizes, groups, cfg.min_domain_fraction)
    # Order domains largest first (ties: lowest fine index) so names/ids are stable and readable.
    groups.sort(key=lambda g: (-sizes[g].sum(), min(g)))
    fine_to_domain = np.empty(len(centroids), dtype=np.int64)
    for d, g in enumerate(groups):
        fine_to_domain[g] = d
    labels = fine_to_domain[fine_labels]

    terms = _top_terms(sample, labels, len(groups), cfg.n_top_terms)
    domains = []
    for d, g in enumerate(groups):
        dom_centroid = normalize_rows((centroids[g] * sizes[g, None]).sum(0, keepdims=True))[0]
        domains.append(
            DomainInfo(
                name=_slug_name(d, terms[d]),
                top_terms=terms[d],
                examples=_examples(sample, emb, labels, d, dom_centroid, cfg.n_examples, cfg.example_chars),
                share=float((labels == d).mean()),
                n_fine=len(g),
            )
        )
    meta = {"seed": seed, "n_corpus": n, "n_sample": len(sample), "fine_sizes": sizes.astype(int).tolist()}
    return ClusterModel(embedder, centroids, fine_to_domain, domains, cfg, meta)


def _embed_batched(embedder: Embedder, texts: list[str], progress: bool, desc: str, batch: int = 2048):
    from tqdm.auto import tqdm

    out = []
    with tqdm(total=len(texts), desc=desc, unit="doc", disable=not progress) as bar:
        for s in range(0, len(texts), batch):
            out.append(embedder.embed(texts[s : s + batch]))
            bar.update(min(batch, len(texts) - s))
    return np.concatenate(out) if out else np.zeros((0, embedder.dim), np.float32)


def _kmeans(emb: np.ndarray, cfg: ClusterConfig, seed: int) -> np.ndarray:
    k = cfg.n_fine_clusters
    backend = cfg.kmeans
    if backend == "auto":
        backend = "kmeans" if len(emb) <= 50000 else ("faiss" if _has_faiss() else "minibatch")
    if backend == "faiss":
        if not _has_faiss():
            raise MoemixError("cluster.kmeans: 'faiss' requested but faiss is not installed")
        import faiss

        km = faiss.Kmeans(emb.shape[1], k, niter=25, nredo=cfg.n_init, seed=seed, spherical=True)
        km.train(np.ascontiguousarray(emb, dtype=np.float32))
        return km.centroids
    if backend == "minibatch":
        from sklearn.cluster import MiniBatchKMeans

        km = MiniBatchKMeans(
            n_clusters=k, n_init=cfg.n_init, random_state=seed, batch_size=4096, max_no_improvement=20
        )
    else:
        from sklearn.cluster import KMeans

        km = KMeans(n_clusters=k, n_init=cfg.n_init, random_state=seed, algorithm="lloyd")
    from threadpoolctl import threadpool_limits

    # one thread: OpenMP's reduction order otherwise moves the centroids' last bits from run to run,
    # and a near-tie can then send a document to another domain
    with threadpool_limits(limits=1):
        km.fit(emb)
    return km.cluster_centers_


def _has_faiss() -> bool:
    try:
        import faiss  # noqa: F401
    except ImportError:
        return False
    return True


def _merge(centroids: np.ndarray, sizes: np.ndarray, n_groups: int, linkage: str) -> list[list[int]]:
    """Size-weighted agglomerative merge of fine clusters down to ``n_groups`` groups.

    Each fine cluster stands for its documents: Ward cost ``w_a w_b / (w_a + w_b) * |m_a - m_b|^2``
    on weighted means, or the document-weighted mean cosine distance ("average"). O(k^2) per merge,
    fine for the ~1000 fine clusters CLIMB uses.
    """
    k = len(centroids)
    members: list[list[int] | None] = [[i] for i in range(k)]
    if k <= n_groups:
        return [m for m in members if m]
    w = np.maximum(sizes.astype(np.float64), 1e-6)
    m = centroids.astype(np.float64).copy()
    if linkage == "ward":
        sq = (m**2).sum(1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * m @ m.T, 0.0)
        cost = (w[:, None] * w[None, :]) / (w[:, None] + w[None, :]) * d2
    else:
        cost = 1.0 - m @ m.T
    np.fill_diagonal(cost, np.inf)
    active = np.ones(k, dtype=bool)
    for _ in range(k - n_groups):
        flat = int(np.argmin(cost))
        i, j = divmod(flat, k)
        if i > j:
            i, j = j, i
        wi, wj = w[i], w[j]
        if linkage == "ward":
            m[i] = (wi * m[i] + wj * m[j]) / (wi + wj)
            w[i] = wi + wj
            d2 = ((m - m[i]) ** 2).sum(1)
            row = (w * w[i]) / (w + w[i]) * d2
        else:
            row = (wi * cost[i] + wj * cost[j]) / (wi + wj)
            w[i] = wi + wj
        row[~active] = np.inf
        row[i] = np.inf
        row[j] = np.inf
        cost[i, :] = row
        cost[:, i] = row
        cost[j, :] = np.inf
        cost[:, j] = np.inf
        active[j] = False
        members[i] = members[i] + members[j]  # type: ignore[operator]
        members[j] = None
    return [sorted(g) for g in members if g]


def _fold_tiny(
    centroids: np.ndarray, sizes: np.ndarray, groups: list[list[int]], min_fraction: float
) -> list[list[int]]:
    """Merge the smallest domain into its most similar one until all reach ``min_fraction``."""
    groups = [list(g) for g in groups]
    total = max(sizes.sum(), 1.0)
    while len(groups) > 1:
        shares = np.array([sizes[g].sum() / total for g in groups])
        small = int(np.argmin(shares))
        if shares[small] >= min_fraction:
            break
        means = normalize_rows(np.stack([(centroids[g] * sizes[g, None]).sum(0) for g in groups]))
        # An empty group has a zero mean: fall back to its plain centroid average for direction.
        if not means[small].any():
            means[small] = normalize_rows(centroids[groups[small]].mean(0, keepdims=True))[0]
        sims = means @ means[small]
        sims[small] = -np.inf
        target = int(np.argmax(sims))
        groups[target] = sorted(groups[target] + groups[small])
        del groups[small]
    return groups


# not domains.describe_domains (another regex and score): these terms name the cluster domains, which must not
# change
def _top_terms(texts: list[str], labels: np.ndarray, n_domains: int, n_top: int) -> list[list[str]]:
    """Class-based TF-IDF (as in BERTopic): terms frequent in a domain and rare across domains."""
    from sklearn.feature_extraction.text import CountVectorizer

    vec = CountVectorizer(
        token_pattern=TERM_PATTERN, lowercase=True, stop_words="english", max_features=50000, dtype=np.float32
    )
    try:
        X = vec.fit_transform([t[:4000] for t in texts])
    except ValueError:  # empty vocabulary (e.g. no alphabetic text at all)
        return [[] for _ in range(n_domains)]
    vocab = vec.get_feature_names_out()
    onehot = np.zeros((n_domains, len(labels)), dtype=np.float32)
    onehot[labels, np.arange(len(labels))] = 1.0
    tf = np.asarray((X.T @ onehot.T).T)  # [domains, terms]
    per_class = tf.sum(1, keepdims=True)
    per_class[per_class == 0] = 1.0
    avg_words = tf.sum() / max(n_domains, 1)
    f_t = np.maximum(tf.sum(0), 1.0)
    score = (tf / per_class) * np.log1p(avg_words / f_t)[None, :]
    out = []
    for d in range(n_domains):
        order = np.lexsort((np.arange(len(vocab)), -score[d]))[:n_top]
        out.append([str(vocab[i]) for i in order if score[d, i] > 0])
    return out


def _slug_name(d: int, terms: list[str], n_words: int = 3) -> str:
    parts = [re.sub(r"[^a-z0-9]+", "", t.lower()) for t in terms[:n_words]]
    parts = [p[:12] for p in parts if p]
    return "_".join([f"d{d:02d}", *parts])


def _examples(
    texts: list[str],
    emb: np.ndarray,
    labels: np.ndarray,
    d: int,
    centroid: np.ndarray,
    n: int,
    chars: int,
) -> list[str]:
    idx = np.flatnonzero(labels == d)
    if len(idx) == 0 or n <= 0:
        return []
    sims = emb[idx].astype(np.float64) @ centroid.astype(np.float64)
    order = idx[np.lexsort((idx, -sims))]
    out: list[str] = []
    for i in order:
        snippet = " ".join(texts[i].split())[:chars]
        if snippet and snippet not in out:
            out.append(snippet)
        if len(out) >= n:
            break
    return out
