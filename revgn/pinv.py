"""The pseudo-inverse of one half-layer's features, the inner solve of the exact GN step (`revgn.gn`).

(A^+ T)^T through the n x n Gram matrix G = A A^T (eq-gram): exact (Cholesky, refused when the features are
rank-deficient by `Pinv.rank_rule`), or regularised by a spectral filter of G (truncated, damped, ridge; the
filters of `revgn.damping`), or with noisy features. `Pinv` names which, `features_pinv` computes it.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .damping import lm_filter, shifted_filter, truncated_filter
from .solvers import RankDeficientError


PINV_KINDS = ("exact", "truncate", "damp", "ridge", "noise")
#: when exact GN calls features rank-deficient (`Pinv.rank_rule`)
RANK_RULES = ("matrix_rank", "rounding")
#: how exact GN forms and solves the Gram matrix (`Pinv.gram`)
GRAM_ROUTES = ("float64", "refined")
#: route "refined": the relative residual ||A Delta^T - T|| / ||T|| a step must reach, by the features' dtype
REFINED_RTOL = {torch.float32: 1e-5, torch.float64: 1e-10}
#: route "refined": correction steps tried before the float64 route is asked instead
REFINE_STEPS = 2


@dataclass(frozen=True)
class Pinv:
    """How the pseudo-inverse A^+ of an n x h feature matrix is formed (the paper's App. K, plus ridge).

    With A = U S V^T (singular values s_i, s_max the largest) the step is A^+ T = A^T U f(S^2) U^T T, where
    the filter f is:

    - "exact":    f = 1/s^2. Refuses rank-deficient features (`RankDeficientError`): then no step is exact.
    - "truncate": f = 1/s^2 for s >= max(rtol * s_max, atol), else 0.
    - "damp":     f = 1/(s (s + damping * s_max)): every singular value of A shifted up by damping * s_max.
    - "ridge":    f = 1/(s^2 + mu): Tikhonov / Levenberg-Marquardt damping of the Gram matrix, with mu = ridge,
                  or mu = ridge * mean(s^2) when ridge_relative (one grid then fits every layer).
    - "noise":    A is replaced by A + noise * std(A) * N(0, 1) (fresh each step), then "exact".

    The filters are `revgn.damping`'s (truncated_filter, shifted_filter, lm_filter), applied to the
    eigenvalues s^2 of one half-layer's Gram matrix.
    gram_dtype: dtype of the n x n Gram matrix and its eigendecomposition.
    rank_rule: when the exact kinds refuse features as rank-deficient (default "matrix_rank"):
    s_min <= max(n, h) eps s_max (numpy's and LAPACK's default rule, a worst case over algorithms), or
    "rounding", s_min <= 10 eps ||A||_F: within twenty times what rounding the features to their dtype can move
    a singular value (Weyl), the features' own precision (`rounding_threshold`).
    gram: how the exact kinds form and solve the Gram matrix. "float64" (the default): G in `gram_dtype`,
    Cholesky. "refined" (`refined_features_pinv`): G in the features' own dtype by a symmetric product,
    factored in float64, the solution refined against the features themselves until A Delta^T = T to
    `REFINED_RTOL`; where that Gram cannot settle the rank rule or the residual, the "float64" route decides,
    so "refined" refuses exactly what "float64" refuses.
    """

    kind: str = "exact"
    rtol: float = 0.0
    atol: float = 0.0
    damping: float = 0.0
    ridge: float = 0.0
    noise: float = 0.0
    ridge_relative: bool = False
    gram_dtype: torch.dtype = torch.float64
    rank_rule: str = "matrix_rank"
    gram: str = "float64"

    def __post_init__(self):
        if self.kind not in PINV_KINDS:
            raise ValueError(f"Pinv kind must be one of {PINV_KINDS}, got {self.kind!r}")
        if self.rank_rule not in RANK_RULES:
            raise ValueError(f"Pinv.rank_rule must be one of {RANK_RULES}, got {self.rank_rule!r}")
        if self.gram not in GRAM_ROUTES:
            raise ValueError(f"Pinv.gram must be one of {GRAM_ROUTES}, got {self.gram!r}")
        for name in ("rtol", "atol", "damping", "ridge", "noise"):
            if getattr(self, name) < 0:
                raise ValueError(f"Pinv.{name} must be >= 0, got {getattr(self, name)}")

    @classmethod
    def exact(cls) -> "Pinv":
        return cls("exact")

    @classmethod
    def truncated(cls, rtol: float = 1e-2, atol: float = 1e-5) -> "Pinv":
        return cls("truncate", rtol=rtol, atol=atol)

    @classmethod
    def damped(cls, damping: float = 1e-2) -> "Pinv":
        return cls("damp", damping=damping)

    @classmethod
    def ridged(cls, ridge: float, relative: bool = False) -> "Pinv":
        return cls("ridge", ridge=ridge, ridge_relative=relative)

    @classmethod
    def noisy(cls, noise: float = 0.1) -> "Pinv":
        return cls("noise", noise=noise)

    @property
    def is_exact(self) -> bool:
        return self.kind in ("exact", "noise")


#: the fields of a run spec's optimiser (`revgn.spec.OptimSpec`) each kind reads; the rank rule and the Gram
#: route decide only the exact kinds' steps
SPEC_FIELDS = {"exact": ("rank_rule", "gram"), "noise": ("noise", "rank_rule", "gram"), "truncate": ("rtol", "atol"),
               "damp": ("damping",), "ridge": ("ridge", "ridge_relative")}


def pinv_of_spec(o) -> Pinv:
    """The pseudo-inverse a run spec's optimiser names: its kind `o.pinv` with the fields that kind reads."""
    return Pinv(o.pinv, **{f: getattr(o, f) for f in SPEC_FIELDS[o.pinv]})


def _extreme_eigenvalues(G: torch.Tensor, chol: torch.Tensor, iterations: int = 8) -> tuple[float, float]:
    """Estimates of (lambda_min, lambda_max) of the SPD matrix G from block power and inverse iteration.

    Both come from Rayleigh quotients, so lambda_min is never underestimated and lambda_max never
    overestimated: a small lambda_min estimate proves the matrix is that ill-conditioned. Deterministic start.
    Cost: a few n x 4 products and triangular solves, negligible next to forming G.
    """
    n = G.shape[0]
    start = torch.randn(n, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64).to(G)
    lo, hi = start.clone(), start.clone()
    for _ in range(iterations):
        lo = torch.linalg.solve_triangular(chol.mT, torch.linalg.solve_triangular(chol, lo, upper=False), upper=True)
        lo = lo / lo.norm(dim=0)
        hi = G @ hi
        hi = hi / hi.norm(dim=0)
    lam_min = ((lo * (G @ lo)).sum(0)).min().item()
    lam_max = ((hi * (G @ hi)).sum(0)).max().item()
    return lam_min, lam_max


def _exact_tolerance(n: int, m: int, dtype: torch.dtype, gram_dtype: torch.dtype) -> float:
    """Relative singular-value threshold below which features count as rank-deficient (rule "matrix_rank").

    The larger of the features' own precision (max(n, m) eps, numpy's matrix_rank rule) and what the Gram
    route can resolve (sqrt(10 n eps) in the Gram's dtype).
    """
    return max(max(n, m) * torch.finfo(dtype).eps, (10 * n * torch.finfo(gram_dtype).eps) ** 0.5)


def rounding_threshold(A: torch.Tensor, lam_max: float, gram_dtype: torch.dtype) -> tuple[float, str]:
    """Rank rule "rounding": the smallest singular value below which exact GN refuses the n x m features A,
    and the bound that set it, in words.

    Rounding each entry of A to its dtype moves it by at most eps/2 of itself, so the stored matrix is within
    eps/2 ||A||_F of the exact one in spectral norm, and by Weyl's inequality so is every singular value: one
    above 10 eps ||A||_F (twenty times that bound) is resolved by the features' own precision. What the Gram
    route cannot resolve, sqrt(10 n eps_gram) s_max (s_max^2 ~ lam_max), is refused too, as under
    "matrix_rank" (`_exact_tolerance`).
    """
    n = A.shape[0]
    gram = (10 * n * torch.finfo(gram_dtype).eps) ** 0.5 * max(lam_max, 0.0) ** 0.5
    own = 10 * torch.finfo(A.dtype).eps * torch.linalg.matrix_norm(A.to(torch.float64)).item()
    if own >= gram:
        return own, f"10 eps ||A||_F = {own:.3g}, the features' own rounding"
    return gram, f"sqrt(10 n eps) s_max = {gram:.3g}, what the {str(gram_dtype).replace('torch.', '')} Gram resolves"


def _rank_floor(A: torch.Tensor, lam_max: float, pinv: Pinv) -> tuple[float, Callable[[float], str]]:
    """The rank rule of `pinv` for the n x m features A whose Gram matrix has largest eigenvalue lam_max: the
    floor on the smallest eigenvalue (features with lam_min at or below it are refused) and the refusal's
    detail as a function of lam_min."""
    n, m = A.shape
    dtype = str(A.dtype).replace("torch.", "")
    if pinv.rank_rule == "matrix_rank":  # today's message, word for word: records quote it
        tol = _exact_tolerance(n, m, A.dtype, pinv.gram_dtype)

        def detail(lam_min: float) -> str:
            ratio = (max(lam_min, 0.0) / lam_max) ** 0.5 if lam_max > 0 else 0.0
            return f"smallest/largest singular value <= {ratio:.3g}, below the tolerance {tol:.3g} for {dtype} features"

        return (tol ** 2) * lam_max, detail
    floor, rule = rounding_threshold(A, lam_max, pinv.gram_dtype)
    return floor ** 2, lambda lam_min: (f"smallest singular value <= {max(lam_min, 0.0) ** 0.5:.3g}, not above "
                                        f"{rule} ({dtype} features)")


def symmetric_gram(A: torch.Tensor, blocks: int = 4) -> torch.Tensor:
    """G = A A^T (n x n) in A's dtype from the row blocks on and above the diagonal only, the lower ones
    mirrored: (blocks + 1) / (2 blocks) of the full product's work (BLAS's syrk, which torch does not expose)."""
    n = A.shape[0]
    edges = [n * i // blocks for i in range(blocks + 1)]
    G = A.new_empty(n, n)
    for a, b in zip(edges, edges[1:]):
        G[a:b, a:] = A[a:b] @ A[a:].T
        G[b:, a:b] = G[a:b, b:].T
    return G


def _gram_times(A: torch.Tensor, W: torch.Tensor, rows: int = 128) -> torch.Tensor:
    """A A^T W in float64 (W: n x k, k small), casting A a few rows at a time: a float64 copy of all of A would
    cost more than the float32 Gram it checks."""
    AtW = sum(A[a:a + rows].to(torch.float64).T @ W[a:a + rows] for a in range(0, len(A), rows))
    return torch.cat([A[a:a + rows].to(torch.float64) @ AtW for a in range(0, len(A), rows)])


@torch.no_grad()
def refined_features_pinv(A: torch.Tensor, T: torch.Tensor, pinv: Pinv = Pinv(), probes: int = 4) -> torch.Tensor | None:
    """(A^+ T)^T for exact GN by route "refined", or None where only the float64 route can decide.

    The n x n Gram G = A A^T is formed in A's dtype (`symmetric_gram`) and factored in float64. Its rounding
    error E = fl(G) - A A^T is measured against the features in float64 on `probes` Gaussian directions W
    (E[||E W||_F^2] = probes ||E||_F^2 >= probes ||E||_2^2; the estimate is doubled): by Weyl's inequality
    every eigenvalue of fl(G) is then within that of the features' own, so the rank rule of `pinv` is applied
    to the certain side only (features it would refuse, or cannot place, go to the float64 route). The
    solution is then refined against the features themselves, z <- z + G^{-1}(T - A A^T z) (iterative
    refinement, the residual formed from A, not from fl(G)), until ||A Delta^T - T|| <= REFINED_RTOL ||T||;
    after REFINE_STEPS corrections without it, None. Cost: (blocks + 1)/(2 blocks) of the Gram in A's
    dtype, one n x m product per refinement, and probes-column products in float64.
    """
    if A.dtype not in REFINED_RTOL:
        return None
    n = A.shape[0]
    G = symmetric_gram(A, min(4, n)).to(torch.float64)
    chol, info = torch.linalg.cholesky_ex(G)
    if info.item() != 0:
        return None
    lam_min, lam_max = _extreme_eigenvalues(G, chol)
    W = torch.randn(n, probes, generator=torch.Generator().manual_seed(1), dtype=torch.float64).to(A.device)
    rounding = 2 * (torch.linalg.matrix_norm(G @ W - _gram_times(A, W)) / probes ** 0.5).item()
    floor, _ = _rank_floor(A, lam_max, pinv)
    if lam_max <= 0 or lam_min - rounding <= floor:
        return None
    target, rtol = T.norm().item(), REFINED_RTOL[A.dtype]
    step = torch.cholesky_solve(T.to(torch.float64), chol).to(A.dtype).T @ A
    for i in range(REFINE_STEPS + 1):
        residual = T - A @ step.T
        if residual.norm().item() <= rtol * target:
            return step
        if i < REFINE_STEPS:
            step = step + torch.cholesky_solve(residual.to(torch.float64), chol).to(A.dtype).T @ A
    return None


def rank_error(where: str, n: int, m: int, detail: str) -> RankDeficientError:
    """The error that refuses an exact step: which features (`where`, n x m) and why (`detail`)."""
    return RankDeficientError(
        f"{where}: the n x h features (n={n}, h={m}) are rank-deficient: {detail}. Exact GN needs linearly "
        f"independent feature columns; with a dependent column no step moves the outputs by exactly the error. "
        f"Use Pinv.truncated(), damped() or ridged() for an inexact step.")


def features_pinv(A: torch.Tensor, T: torch.Tensor, pinv: Pinv = Pinv(), *, where: str = "features",
                  generator: torch.Generator | None = None) -> torch.Tensor:
    """(A^+ T)^T through the Gram matrix G = A A^T (eq-gram).

    A: n x m features (m = h, or h + 1 with a bias column). T: n x k targets. Returns k x m, the shape of the
    weight matrix the step updates. Cost: the Gram matrix (n^2 m), an n x n factorisation in
    `pinv.gram_dtype` (Cholesky for the exact kinds, an eigendecomposition for the spectral filters) and one
    k x n x m product, instead of an SVD of the m x n matrix.
    """
    n, m = A.shape
    if T.shape[0] != n:
        raise ValueError(f"{where}: features have {n} rows but the targets {T.shape[0]}")
    if pinv.kind == "noise":
        A = A + pinv.noise * A.std() * torch.randn(A.shape, generator=generator, dtype=A.dtype).to(A.device)
    if pinv.is_exact and m < n:
        raise RankDeficientError(
            f"{where}: exact GN needs at least as many features as examples, got h={m} < n={n}. An h x n feature "
            f"matrix with h < n cannot have independent columns, so no step moves the outputs by exactly the "
            f"error. Use a batch of at most {m} examples, a wider bottleneck, or a regularised pseudo-inverse "
            f"(Pinv.truncated / damped / ridged), which gives an inexact step.")
    if pinv.is_exact and pinv.gram == "refined":
        step = refined_features_pinv(A, T, pinv)
        if step is not None:
            return step  # else the float64 route below decides, exactly as route "float64" would
    Ag = A.to(pinv.gram_dtype)
    G = Ag @ Ag.T
    Tg = T.to(pinv.gram_dtype)
    if pinv.is_exact:
        chol, info = torch.linalg.cholesky_ex(G)
        if info.item() != 0:
            raise rank_error(where, n, m, "the Gram matrix is not numerically positive definite")
        lam_min, lam_max = _extreme_eigenvalues(G, chol)
        floor, detail = _rank_floor(A, lam_max, pinv)
        if lam_max <= 0 or lam_min <= floor:
            raise rank_error(where, n, m, detail(lam_min))
        coef = torch.cholesky_solve(Tg, chol)  # G^{-1} T
    else:
        lam, U = torch.linalg.eigh(G)
        lam = lam.clamp_min(0)
        s = lam.sqrt()
        if s[-1] == 0:
            raise RankDeficientError(f"{where}: the features are all zero; no step can change the outputs")
        # the tangent-kernel filters of revgn.damping, applied to the Gram matrix of one half-layer's features
        if pinv.kind == "truncate":
            filt = truncated_filter(lam, pinv.rtol, pinv.atol)
        elif pinv.kind == "damp":
            filt = shifted_filter(lam, pinv.damping)
        else:  # ridge
            if pinv.ridge == 0:
                raise ValueError("Pinv.ridged needs ridge > 0; use Pinv.exact() for no damping")
            filt = lm_filter(lam, pinv.ridge * (lam.mean() if pinv.ridge_relative else 1.0))
        coef = U @ (filt[:, None] * (U.T @ Tg))  # f(G) T
    if pinv.rank_rule == "rounding":
        # Features accepted down to their own rounding can be ill-conditioned: then G^{-1} T is large and
        # A^T G^{-1} T cancels, so the product is formed in the Gram's dtype and rounded once, at the end.
        return (coef.T @ Ag).to(A.dtype)
    return coef.to(A.dtype).T @ A
