"""Per-domain effective-data scaling laws, composed into the target and extrapolated in training tokens.

Why this law: a model of the summed target fitted on a few dozen final proxy losses cannot see that
starving a domain raises *that domain's* loss, nor that the damage grows with training — early on
every domain's loss falls with shared structure (token statistics) learnt from any data, and only
later with the domain's own data. Pretraining runs later than the proxies, so a mixture that starves
a domain looks harmless to the proxies and is the worst choice at the target scale (issue 12).

Each component k (a domain's validation loss, or an external target) gets its own law in the number
of tokens that are useful to it (the RegMix/Data Mixing Laws mixing law crossed with a Chinchilla-style
data term, as BiMix crosses proportion and steps):

    L_k(w, s) = E_k + B_k · (s · φ_k(w) + x_k)^(−α_k) + δ_k(s)
    φ_k(w)   = w_k + Σ_{j≠k} τ_kj · w_j          τ_kj ∈ [0, 1]  (transfer from domain j)

``s`` is training tokens relative to the proxies' budget (1 = a proxy's end, ``target_scale`` = the
pretraining budget), ``x_k ≥ 0`` the effective tokens a model has for k before seeing any (what the
model gets from its vocabulary and architecture), and ``δ_k(s)`` one free offset per intermediate
evaluation point: a proxy evaluated part-way through a cosine schedule sits above the end-of-run curve
by an amount common to every mixture, which would otherwise bend the fitted exponent. Predictions
are end-of-run (δ = 0) at ``target_scale``. Every run contributes ``curve_points`` evaluations, so
26 proxies give ~130 points per component for its ~D + 3 parameters (+ the offsets).

The target is ``Σ_k c_k L_k`` with the target's own coefficients. The same law also fits a plain
table of final losses (``fit(X, y)``: one component, no own domain, s = 1), which makes it usable from
``moemix fit`` on any runs table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from moemix.errors import MoemixError
from moemix.mixing.predictors.base import Predictor, register

_N_CORE = 4  # E, log B, alpha, log x


@dataclass
class CurvePoints:
    """Loss curves as flat arrays: one row per (run, evaluation point)."""

    W: np.ndarray  # [m, D] mixture of the run
    scale: np.ndarray  # [m] training tokens at the point / the proxies' full budget
    losses: np.ndarray  # [m, C] one column per component
    groups: np.ndarray  # [m] id of the run's mixture (CV holds out whole mixtures, seeds included)

    def subset(self, mask: np.ndarray) -> CurvePoints:
        return CurvePoints(self.W[mask], self.scale[mask], self.losses[mask], self.groups[mask])


def _unpack(
    p: np.ndarray, D: int, own: int | None, n_delta: int
) -> tuple[float, float, float, float, np.ndarray, np.ndarray]:
    E, log_b, alpha, log_x = p[:_N_CORE]
    n_tau = D - (own is not None)
    free = p[_N_CORE : _N_CORE + n_tau]
    tau = np.ones(D)
    if own is None:
        tau = free.copy()
    else:
        tau[np.arange(D) != own] = free
    delta = p[_N_CORE + n_tau : _N_CORE + n_tau + n_delta]
    return E, log_b, alpha, log_x, tau, delta


def _law(params: dict[str, Any], W: np.ndarray, s: np.ndarray) -> np.ndarray:
    phi = W @ np.asarray(params["tau"])
    x = s * phi + np.exp(params["log_x"])
    return params["E"] + np.exp(params["log_b"]) * x ** (-params["alpha"])


def _offset_keys(s: np.ndarray) -> tuple[list[float], np.ndarray]:
    """The intermediate evaluation points (an offset each) and every row's index into them (-1: end of
    run)."""
    s_key = np.round(s, 4)
    mids = sorted(set(s_key[s_key < s_key.max()].tolist()))
    return mids, np.array([mids.index(v) if v in mids else -1 for v in s_key.tolist()], dtype=np.int64)


def fit_component(
    W: np.ndarray,
    s: np.ndarray,
    y: np.ndarray,
    own: int | None,
    *,
    n_restarts: int = 4,
    l2: float = 1e-2,
    seed: int = 0,
    speed: np.ndarray | None = None,
    init: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Least-squares fit of one component's law (several starts; the lowest cost wins).

    ``speed`` (per row) multiplies the row's training tokens: its run's learning speed (run effects).
    ``init`` (an earlier fit of the same component) is the only start: bootstrap refits start from the
    full fit, so their spread is the data's and not the optimiser's choice among local optima.
    """
    from scipy.optimize import least_squares

    W = np.asarray(W, dtype=np.float64)
    s_eval = np.asarray(s, dtype=np.float64)
    s = s_eval if speed is None else s_eval * np.asarray(speed, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    m, D = W.shape
    # offsets for every intermediate evaluation point; end-of-run points (s == max) have none
    mids, mid_idx = _offset_keys(s_eval)
    n_delta = len(mids)
    n_tau = D - (own is not None)
    ymin, ystd = float(np.min(y)), float(np.std(y)) or 1.0
    # the ridge on tau (toward no transfer) and delta keeps a fit on ~D runs well-posed; tiny otherwise
    lam = np.sqrt(l2 * m) * ystd

    def residuals(p: np.ndarray) -> np.ndarray:
        E, log_b, alpha, log_x, tau, delta = _unpack(p, D, own, n_delta)
        x = s * (W @ tau) + np.exp(log_x)
        pred = E + np.exp(log_b) * x ** (-alpha)
        if n_delta:
            pred = pred + np.where(mid_idx >= 0, delta[np.maximum(mid_idx, 0)], 0.0)
        return np.concatenate([pred - y, lam * p[_N_CORE : _N_CORE + n_tau]])

    free_cols = np.arange(D) if own is None else np.flatnonzero(np.arange(D) != own)
    onehot = np.zeros((m, n_delta))
    if n_delta:
        onehot[mid_idx >= 0, mid_idx[mid_idx >= 0]] = 1.0

    def jacobian(p: np.ndarray) -> np.ndarray:
        E, log_b, alpha, log_x, tau, _ = _unpack(p, D, own, n_delta)
        x = s * (W @ tau) + np.exp(log_x)
        bx = np.exp(log_b) * x ** (-alpha)
        dx = -alpha * bx / x  # d pred / d x
        J = np.empty((m + n_tau, p.size))
        J[:m, 0] = 1.0
        J[:m, 1] = bx
        J[:m, 2] = -bx * np.log(x)
        J[:m, 3] = dx * np.exp(log_x)
        J[:m, _N_CORE : _N_CORE + n_tau] = (dx * s)[:, None] * W[:, free_cols]
        J[:m, _N_CORE + n_tau :] = onehot
        J[m:] = 0.0
        J[m:, _N_CORE : _N_CORE + n_tau] = lam * np.eye(n_tau)
        return J

    lo = np.concatenate([[0.0, -20.0, 0.01, np.log(1e-5)], np.zeros(n_tau), np.full(n_delta, -5.0)])
    hi = np.concatenate([[max(ymin, 1e-6), 20.0, 3.0, np.log(10.0)], np.ones(n_tau), np.full(n_delta, 5.0)])
    rng = np.random.default_rng(seed)
    best = None
    if init is not None:
        free = np.asarray(init["tau"])[free_cols]
        delta0 = np.array([init["delta"].get(f"{v:g}", 0.0) for v in mids])
        p0 = np.concatenate([[init["E"], init["log_b"], init["alpha"], init["log_x"]], free, delta0])
        best = least_squares(
            residuals,
            np.clip(p0, lo + 1e-9, hi - 1e-9),
            jac=jacobian,
            bounds=(lo, hi),
            method="trf",
            x_scale="jac",
            max_nfev=500,
        )
        n_restarts = 0
    for r in range(n_restarts):
        alpha0 = [0.3, 0.1, 0.8, 1.5][r % 4] * (1.0 if r < 4 else rng.uniform(0.5, 1.5))
        E0 = ymin * [0.5, 0.8, 0.2, 0.65][r % 4]
        tau0 = np.full(n_tau, 0.2) if r == 0 else rng.uniform(0.0, 0.6, n_tau)
        x0 = np.log([0.01, 0.05, 0.002, 0.1][r % 4])
        xs = s * (
            W @ _unpack(np.concatenate([[E0, 0.0, alpha0, x0], tau0, np.zeros(n_delta)]), D, own, n_delta)[4]
        )
        scale = float(np.mean((xs + np.exp(x0)) ** (-alpha0)))
        b0 = np.log(max(float(np.mean(y)) - E0, 1e-3) / max(scale, 1e-12))
        p0 = np.clip(np.concatenate([[E0, b0, alpha0, x0], tau0, np.zeros(n_delta)]), lo + 1e-9, hi - 1e-9)
        res = least_squares(
            residuals, p0, jac=jacobian, bounds=(lo, hi), method="trf", x_scale="jac", max_nfev=500
        )
        if best is None or res.cost < best.cost:
            best = res
    E, log_b, alpha, log_x, tau, delta = _unpack(best.x, D, own, n_delta)
    return {
        "own": own,
        "E": float(E),
        "log_b": float(log_b),
        "alpha": float(alpha),
        "log_x": float(log_x),
        "tau": [float(t) for t in tau],
        "delta": {f"{k:g}": float(v) for k, v in zip(mids, delta)},
        "rmse": float(np.sqrt(np.mean(residuals(best.x)[:m] ** 2))),
    }


def _run_speeds(
    comps: list[dict[str, Any]], pts: CurvePoints, span: float = 0.7, n_grid: int = 57, center: bool = True
) -> np.ndarray:
    """Per row, its run's learning-speed factor: the multiplier of its tokens that best fits all of the
    run's losses under the current laws (grid search in log space), centred to geometric mean 1."""
    mids, mid_idx = _offset_keys(pts.scale)
    grid = np.linspace(-span, span, n_grid)
    sse = np.zeros((n_grid, len(pts.W)))
    for k, c in enumerate(comps):
        delta = np.array([c["delta"].get(f"{v:g}", 0.0) for v in mids] + [0.0])
        off = delta[mid_idx]  # index -1 picks the end-of-run 0.0
        y = pts.losses[:, k]
        ok = np.isfinite(y)
        for i, g in enumerate(grid):
            r = _law(c, pts.W, pts.scale * np.exp(g)) + off - y
            sse[i] += np.where(ok, r * r, 0.0)
    groups, inverse = np.unique(pts.groups, return_inverse=True)
    per_run = np.zeros((n_grid, len(groups)))
    np.add.at(per_run.T, inverse, sse.T)
    log_speed = grid[np.argmin(per_run, axis=0)]
    if center:
        log_speed -= log_speed.mean()
    return np.exp(log_speed[inverse])


@register
class ScalingLawPredictor(Predictor):
    """Target = Σ_k c_k · L_k(w, target_scale) over per-component effective-data laws (module docstring)."""

    name = "scaling_law"
    smooth = True
    seeded = True

    def __init__(
        self,
        target_scale: float = 1.0,
        n_restarts: int = 4,
        l2: float = 1e-2,
        seed: int = 0,
        bootstrap: int = 16,
        target_params: float | None = None,
        run_effect_rounds: int = 2,
        size_per_domain: bool = False,
    ) -> None:
        # target_params: active parameters of the model predicted for, relative to the proxies' (used
        # once calibrate_size has measured how much faster a larger proxy learns); size_per_domain: fit
        # that speed per component instead of pooled (calibrate_size)
        super().__init__(
            target_scale=target_scale,
            n_restarts=n_restarts,
            l2=l2,
            seed=seed,
            bootstrap=bootstrap,
            target_params=target_params,
            run_effect_rounds=run_effect_rounds,
            size_per_domain=size_per_domain,
        )
        self.size_exponent: float | None = None
        self.component_size_exponents: list[float] | None = None
        self.components: list[dict[str, Any]] = []
        # the same laws refitted on runs resampled with replacement (whole mixtures, seeds together):
        # how much a prediction, or a predicted difference, depends on which noisy runs the swarm drew
        self.members: list[list[dict[str, Any]]] = []
        self.names: list[str] = []
        self.coefs: list[float] = []
        self.run_speed_spread: float | None = None

    def fit(self, X: np.ndarray, y: np.ndarray) -> ScalingLawPredictor:
        """A plain table of final losses: one component (the target itself), every domain a transfer
        source."""
        X = np.atleast_2d(np.asarray(X, dtype=np.float64))
        pts = CurvePoints(X, np.ones(len(X)), np.asarray(y, dtype=np.float64)[:, None], np.arange(len(X)))
        return self.fit_curves(pts, owns=[None], coefs=[1.0], names=["target"])

    def fit_curves(
        self, pts: CurvePoints, owns: list[int | None], coefs: list[float], names: list[str]
    ) -> ScalingLawPredictor:
        if pts.losses.shape[1] != len(owns) or len(coefs) != len(owns) or len(names) != len(owns):
            raise MoemixError("scaling_law: one own-domain index, coefficient and name per loss column")
        if len(np.unique(pts.groups)) < 3:
            raise MoemixError(
                f"scaling_law: needs runs of at least 3 mixtures, got {len(np.unique(pts.groups))}"
            )
        self.n_features = pts.W.shape[1]
        self.components, speed = self._fit_all(pts, owns)
        self.run_speed_spread = float(np.std(np.log(speed)))
        self.names, self.coefs = list(names), [float(c) for c in coefs]
        rng = np.random.default_rng(int(self.params["seed"]) + 7919)
        groups = np.unique(pts.groups)
        # one mixture's runs (several seeds) are resampled together
        mix_of = {g: tuple(np.round(pts.W[pts.groups == g][0], 9)) for g in groups}
        mixtures = sorted(set(mix_of.values()))
        by_mix = {m: [g for g in groups if mix_of[g] == m] for m in mixtures}
        self.members = []
        for _ in range(int(self.params.get("bootstrap", 0))):
            draw = rng.integers(0, len(mixtures), size=len(mixtures))
            rows = np.concatenate(
                [np.flatnonzero(pts.groups == g) for i in draw for g in by_mix[mixtures[i]]]
            )
            boot = pts.subset(rows)
            self.members.append(self._fit_all(boot, owns, speed=speed[rows], init=self.components)[0])
        return self

    def _fit_all(
        self,
        pts: CurvePoints,
        owns: list[int | None],
        n_restarts: int | None = None,
        speed: np.ndarray | None = None,
        init: list[dict[str, Any]] | None = None,
    ) -> tuple[list[dict[str, Any]], np.ndarray]:
        """Every component's law, with run effects by backfitting when each run has a curve.

        Why run effects: proxies differ by seed as much as by mixture (the demo's uniform mixture under
        three seeds spans 0.19 nats), and the difference is shared by every domain and grows with
        training — a seed that learns faster. Each run gets a learning-speed factor on its tokens,
        estimated from all its domains and evaluation points at once (centred: predictions are for
        the average seed), so the laws see the mixture's effect rather than the seed's.
        """
        restarts = int(n_restarts or self.params["n_restarts"])
        _, counts = np.unique(pts.groups, return_counts=True)
        rounds = int(self.params.get("run_effect_rounds", 2)) if np.median(counts) >= 3 else 0
        if speed is not None:  # given (bootstrap refits reuse the full fit's run speeds)
            rounds = 0
        speed = np.ones(len(pts.W)) if speed is None else speed
        comps_prev = None  # later backfitting rounds start from the previous round's laws
        for it in range(rounds + 1):
            comps = []
            for k, own in enumerate(owns):
                ok = np.isfinite(pts.losses[:, k])
                start = comps_prev[k] if comps_prev is not None else (init[k] if init is not None else None)
                comps.append(
                    fit_component(
                        pts.W[ok],
                        pts.scale[ok],
                        pts.losses[ok, k],
                        own,
                        n_restarts=restarts,
                        l2=float(self.params["l2"]),
                        seed=int(self.params["seed"]) + k,
                        speed=speed[ok],
                        init=start,
                    )
                )
            comps_prev = comps
            if it < rounds:
                speed = _run_speeds(comps, pts)
        return comps, speed

    def calibrate_size(self, large: CurvePoints, params_ratio: float) -> float:
        """Model size as learning speed: fit the one token multiplier that makes the base laws explain the
        curves of the same mixtures trained by a proxy ``params_ratio`` times larger (the scale check),
        and read it as ``params_ratio ** size_exponent``. Predictions then run at ``target_scale ×
        target_params ** size_exponent`` (Data Mixing Laws nest model size on top of the mixing law; a
        speed factor is that nesting with one parameter, all that a few large runs can pin down).

        With ``size_per_domain`` every component also gets its own multiplier, fitted on its own column
        of the larger proxy's curves: a larger model gains more on some domains than on others (per-domain
        scaling laws have different exponents in model size), which moves the mixture optimum with
        scale, and a single pooled speed cannot."""
        if params_ratio <= 1.0 or len(large.W) == 0:
            raise MoemixError(
                f"scaling_law: the scale check's model must be larger (params ratio {params_ratio:.3g})"
            )
        zeros = np.zeros(len(large.W), dtype=np.int64)
        pooled = CurvePoints(large.W, large.scale, large.losses, zeros)
        speed = float(_run_speeds(self.components, pooled, span=3.0, n_grid=241, center=False)[0])
        self.size_exponent = float(np.log(speed) / np.log(params_ratio))
        self.component_size_exponents = None
        if self.params.get("size_per_domain"):
            exps = []
            for k, comp in enumerate(self.components):
                col = CurvePoints(large.W, large.scale, large.losses[:, [k]], zeros)
                if not np.isfinite(col.losses).any():  # no larger-proxy losses for it: the pooled speed
                    exps.append(self.size_exponent)
                    continue
                own = float(_run_speeds([comp], col, span=3.0, n_grid=241, center=False)[0])
                exps.append(float(np.log(own) / np.log(params_ratio)))
            self.component_size_exponents = exps
        return self.size_exponent

    def effective_scale(self) -> float:
        """Training progress predicted for: the token ratio, sped up by model size when calibrated."""
        scale = float(self.params["target_scale"])
        ratio = self.params.get("target_params")
        if self.size_exponent is not None and ratio:
            scale *= float(ratio) ** self.size_exponent
        return scale

    def component_scales(self) -> np.ndarray:
        """[C] the training progress each component is predicted at: ``effective_scale()`` for all, unless
        the size calibration fitted one speed per component."""
        ratio = self.params.get("target_params")
        if self.component_size_exponents is None or not ratio:
            return np.full(len(self.components), self.effective_scale())
        exps = np.asarray(self.component_size_exponents, dtype=np.float64)
        return float(self.params["target_scale"]) * float(ratio) ** exps

    def component_losses(self, X: np.ndarray, scale: float | None = None) -> np.ndarray:
        """[n, C] predicted end-of-run loss of every component at ``scale`` (default: effective_scale())."""
        X = self._check_X(X)
        scales = self.component_scales() if scale is None else np.full(len(self.components), float(scale))
        return np.stack([_law(c, X, np.full(len(X), sc)) for c, sc in zip(self.components, scales)], axis=1)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.component_losses(X) @ np.asarray(self.coefs)

    def predict_members(self, X: np.ndarray) -> np.ndarray | None:
        """[members, n] predictions of the bootstrap refits (None without any)."""
        if not self.members:
            return None
        X = self._check_X(X)
        scales = [np.full(len(X), sc) for sc in self.component_scales()]
        coefs = np.asarray(self.coefs)
        return np.stack(
            [np.stack([_law(c, X, s) for c, s in zip(m, scales)], axis=1) @ coefs for m in self.members]
        )

    def predict_with_std(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
        members = self.predict_members(X)
        return self.predict(X), (None if members is None else members.std(axis=0, ddof=1))

    def at_scale(self, scale: float) -> ScalingLawPredictor:
        """The same fitted laws predicting at another training budget (1 = the proxies')."""
        other = ScalingLawPredictor(**{**self.params, "target_scale": float(scale), "target_params": None})
        other.n_features, other.components, other.members = self.n_features, self.components, self.members
        other.names, other.coefs = self.names, self.coefs
        return other

    def get_state(self) -> dict[str, Any]:
        return {
            "components": self.components,
            "members": self.members,
            "names": self.names,
            "coefs": self.coefs,
            "run_speed_spread": self.run_speed_spread,
            "size_exponent": self.size_exponent,
            "component_size_exponents": self.component_size_exponents,
        }

    def set_state(self, state: dict[str, Any]) -> None:
        self.components = list(state["components"])
        self.members = [list(m) for m in state.get("members", [])]
        self.names, self.coefs = list(state["names"]), [float(c) for c in state["coefs"]]
        self.run_speed_spread = state.get("run_speed_spread")
        self.size_exponent = state.get("size_exponent")
        self.component_size_exponents = state.get("component_size_exponents")

    def explain(self, domains: list[str]) -> dict[str, Any]:
        out = {}
        for name, c in zip(self.names, self.components):
            out[name] = {
                "E": c["E"],
                "B": float(np.exp(c["log_b"])),
                "alpha": c["alpha"],
                "x0": float(np.exp(c["log_x"])),
                "transfer": dict(zip(domains, c["tau"])),
                "rmse": c.get("rmse"),
            }
        return {
            "target_scale": self.params["target_scale"],
            "effective_scale": self.effective_scale(),
            "size_exponent": self.size_exponent,
            "component_size_exponents": (
                None
                if self.component_size_exponents is None
                else dict(zip(self.names, self.component_size_exponents))
            ),
            "coefs": dict(zip(self.names, self.coefs)),
            "run_speed_log_std": self.run_speed_spread,
            "bootstrap_members": len(self.members),
            "components": out,
        }
