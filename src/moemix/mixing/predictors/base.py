"""The predictor interface: weights [n, D] -> target loss [n], with optional std.

Every predictor serialises to plain JSON (``state``) so a fit directory is inspectable, diffable
and loadable without pickle (no arbitrary code execution when loading someone's fit).
"""

from __future__ import annotations

import functools
import importlib
import inspect
import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, ParamSpec, TypeVar

import numpy as np

from moemix._io import to_jsonable, write_json_atomic
from moemix.errors import MoemixError

P = ParamSpec("P")
R = TypeVar("R")

EPS_LOG = 1e-3  # log features: log(w + eps); eps ~ the smallest weight a swarm samples


def featurize(X: np.ndarray, kind: str) -> np.ndarray:
    """Feature maps over mixture weights.

    Why sqrt/log: the loss of a domain responds steeply to its first few percent of weight and
    then saturates (diminishing returns); sqrt and log linearise that, which is what lets a
    linear model on 32-64 runs rank mixtures as well as trees do on 512.
    """
    X = np.asarray(X, dtype=np.float64)
    if kind == "raw":
        return X
    if kind == "sqrt":
        return np.sqrt(np.clip(X, 0, None))
    if kind == "log":
        return np.log(np.clip(X, 0, None) + EPS_LOG)
    if kind == "rawlog":
        return np.hstack([X, np.log(np.clip(X, 0, None) + EPS_LOG)])
    if kind == "rawsqrt":
        return np.hstack([X, np.sqrt(np.clip(X, 0, None))])
    raise MoemixError(f"features: unknown feature map {kind!r} (raw, sqrt, log, rawlog, rawsqrt)")


FEATURES = ("raw", "sqrt", "log", "rawlog", "rawsqrt")


def blas_threads(n: int = 1):
    """Cap BLAS threads. The matrices here are tiny (<= a few hundred runs), so BLAS threading only
    adds synchronisation: a GP fit on 64 runs is ~10x faster single-threaded on a busy 2-core box."""
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=n)


def one_blas_thread(fn: Callable[P, R]) -> Callable[P, R]:
    """``fn`` run under ``blas_threads(1)``."""

    @functools.wraps(fn)
    def run(*args: P.args, **kwargs: P.kwargs) -> R:
        with blas_threads(1):
            return fn(*args, **kwargs)

    return run


class Predictor(ABC):
    name: ClassVar[str] = "base"
    #: whether predictions are smooth in the weights (gradient-based proposers need this)
    smooth: ClassVar[bool] = True
    #: whether the constructor takes ``seed`` (the fit passes its own seed unless the user set one)
    seeded: ClassVar[bool] = False
    #: whether ``fit.predictor`` may name it (False: built by the fit itself, e.g. a sum of members)
    selectable: ClassVar[bool] = True

    def __init__(self, **params: Any) -> None:
        self.params: dict[str, Any] = dict(params)
        self.n_features: int | None = None

    @property
    def label(self) -> str:
        extra = ",".join(f"{k}={v}" for k, v in sorted(self.params.items()) if k in ("features",))
        return f"{self.name}({extra})" if extra else self.name

    @abstractmethod
    def fit(self, X: np.ndarray, y: np.ndarray) -> Predictor: ...

    @abstractmethod
    def predict(self, X: np.ndarray) -> np.ndarray: ...

    def predict_with_std(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        """Mean and standard deviation (None where the model has no notion of uncertainty)."""
        return self.predict(X), None

    def predict_members(self, X: np.ndarray) -> np.ndarray | None:
        """[members, n] predictions of refits on resampled runs, for the uncertainty of a *difference*
        between mixtures (None where the predictor keeps none)."""
        return None

    @abstractmethod
    def get_state(self) -> dict[str, Any]: ...

    @abstractmethod
    def set_state(self, state: dict[str, Any]) -> None: ...

    def explain(self, domains: list[str]) -> dict[str, Any]:
        """Coefficients / importances keyed by domain (or feature) name, for the report."""
        return {}

    def save(self, path: str | Path) -> None:
        save_predictor(self, path)

    @staticmethod
    def load(path: str | Path) -> Predictor:
        return load_predictor(path)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "params": self.params,
            "n_features": self.n_features,
            "state": to_jsonable(self.get_state()),
        }

    def _check_X(self, X: np.ndarray) -> np.ndarray:
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        if self.n_features is not None and X.shape[1] != self.n_features:
            raise MoemixError(
                f"predictor {self.name}: expects {self.n_features} weight columns, got {X.shape[1]}"
            )
        return X


_REGISTRY: dict[str, type[Predictor]] = {}
# the modules whose classes ``register``; their order is the order ``PREDICTOR_NAMES`` lists names in
_MODULES = ("auto", "linear", "gbm", "laws", "kernel", "scaling")


def register(cls: type[Predictor]) -> type[Predictor]:
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[Predictor]]:
    """Every predictor class by name: the one list of predictors."""
    for module in _MODULES:
        importlib.import_module(f"moemix.mixing.predictors.{module}")
    return dict(_REGISTRY)


def predictor_class(name: str) -> type[Predictor]:
    reg = registry()
    if name not in reg:
        raise MoemixError(f"predictor: unknown predictor {name!r} (choose from {', '.join(sorted(reg))})")
    return reg[name]


def check_params(name: str, params: dict[str, Any]) -> None:
    """Reject a key the predictor does not take, in one line naming it. A predictor whose constructor
    names every parameter is checked here, so a misspelt key fails at config time instead of fitting
    silently with the default; those taking ``**params`` pass them on to a library, which checks them."""
    signature = inspect.signature(predictor_class(name).__init__)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values()):
        return
    known = [k for k in signature.parameters if k != "self"]
    unknown = sorted(set(params) - set(known))
    if unknown:
        raise MoemixError(
            f"fit.predictor_params: unknown key {unknown[0]!r} for predictor {name!r}"
            f" (known: {', '.join(known)})"
        )


def make_predictor(name: str, **params: Any) -> Predictor:
    check_params(name, params)
    return predictor_class(name)(**params)


def from_dict(obj: dict[str, Any]) -> Predictor:
    p = make_predictor(obj["name"], **obj.get("params", {}))
    p.n_features = obj.get("n_features")
    p.set_state(obj["state"])
    return p


def save_predictor(pred: Predictor, path: str | Path) -> None:
    write_json_atomic(path, pred.to_dict())


def load_predictor(path: str | Path) -> Predictor:
    path = Path(path)
    try:
        obj = json.loads(path.read_text())
    except FileNotFoundError:
        raise MoemixError(f"{path}: predictor file not found") from None
    except json.JSONDecodeError as e:
        raise MoemixError(f"{path}: not valid JSON (line {e.lineno}: {e.msg})") from None
    try:
        return from_dict(obj)
    except (KeyError, TypeError, ValueError) as e:
        raise MoemixError(f"{path}: malformed predictor file ({type(e).__name__}: {e})") from None
