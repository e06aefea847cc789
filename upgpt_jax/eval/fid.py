"""FID and KID from Inception features (float64 numpy; the features come from `inception.py`).

- `FeatureStatistics` accumulates the mean and covariance of features batch by batch (and across
  hosts or shards: `merge`), so no feature matrix of the whole set is kept. Its files are
  pytorch-fid's `--save-stats` .npz (`mu`, `sigma`, plus the sample `count`), and pytorch-fid's own
  files load with `load_statistics`.
- `frechet_distance` is pytorch-fid's `calculate_frechet_distance`:
  ||mu1 - mu2||^2 + tr(sigma1) + tr(sigma2) - 2 tr sqrt(sigma1 sigma2).
- `kernel_inception_distance` is torch-fidelity's KID (Binkowski et al. 2018): the unbiased MMD^2
  with the cubic polynomial kernel (x.y / d + 1)^3, averaged over random equal-size subsets drawn as
  torch-fidelity draws them (same seed, same subsets).
"""
from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np

# pytorch-fid's tolerance: its sqrtm may leave imaginary parts up to 1e-3 on the diagonal, i.e.
# eigenvalues of sigma1 sigma2 down to -(1e-3)^2 are rounding; below that the inputs are not covariances.
_IMAGINARY_TOLERANCE = 1e-3
KID_SEED = 2020  # torch-fidelity's default rng_seed


class FeatureStatistics:
    """Streaming mean and covariance (ddof 1, as `np.cov`) of feature vectors, in float64.

    Batches are combined with Chan et al.'s pairwise update (exact, and stable where the naive
    sum of squares loses digits to a large mean).
    """

    def __init__(self, dim: int):
        self.count = 0
        self.mean = np.zeros(dim, np.float64)
        self.scatter = np.zeros((dim, dim), np.float64)  # sum of outer products of deviations from the mean

    @property
    def dim(self) -> int:
        return self.mean.shape[0]

    def update(self, features: Any) -> FeatureStatistics:
        """Add a (N, dim) batch (numpy or jax array); returns self."""
        features = np.asarray(features, np.float64)
        if features.ndim != 2 or features.shape[1] != self.dim:
            raise ValueError(f"expected features of shape (N, {self.dim}), got {features.shape}")
        if not np.isfinite(features).all():
            raise ValueError("features contain NaN or inf")
        if len(features):
            batch = FeatureStatistics(self.dim)
            batch.count, batch.mean = len(features), features.mean(axis=0)
            centred = features - batch.mean
            batch.scatter = centred.T @ centred
            self.merge(batch)
        return self

    def merge(self, other: FeatureStatistics) -> FeatureStatistics:
        """Fold in the statistics of another set (another shard of the same evaluation); returns self."""
        if other.dim != self.dim:
            raise ValueError(f"cannot merge statistics of dim {other.dim} into dim {self.dim}")
        total = self.count + other.count
        if other.count:
            delta = other.mean - self.mean
            self.scatter = self.scatter + other.scatter + np.outer(delta, delta) * (self.count * other.count / total)
            self.mean = self.mean + delta * (other.count / total)
            self.count = total
        return self

    @property
    def mu(self) -> np.ndarray:
        return self.mean.copy()

    @property
    def sigma(self) -> np.ndarray:
        if self.count < 2:
            raise ValueError(f"a covariance needs at least 2 feature vectors, have {self.count}")
        return self.scatter / (self.count - 1)

    def save(self, path: str | os.PathLike) -> None:
        """pytorch-fid's stats file (`mu`, `sigma`; it reads nothing else) plus `count` for `load`."""
        np.savez_compressed(path, mu=self.mu, sigma=self.sigma, count=np.int64(self.count))

    @classmethod
    def load(cls, path: str | os.PathLike) -> FeatureStatistics:
        """Statistics written by `save`, ready to merge more features into."""
        mu, sigma, arrays = _read_statistics(path, ("mu", "sigma", "count"))
        statistics = cls(mu.shape[0])
        statistics.count = int(arrays["count"])
        statistics.mean, statistics.scatter = mu, sigma * (statistics.count - 1)
        return statistics


def _read_statistics(path: str | os.PathLike, keys: tuple[str, ...]) -> tuple[np.ndarray, np.ndarray, dict]:
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"FID statistics file not found: {path} (expected an .npz with {', '.join(keys)})")
    with np.load(path, allow_pickle=False) as data:
        missing = [key for key in keys if key not in data.files]
        if missing:
            raise ValueError(f"{path}: missing {missing}; expected an .npz with {', '.join(keys)}, found {data.files}")
        arrays = {key: data[key] for key in keys}
    mu, sigma = np.asarray(arrays["mu"], np.float64), np.asarray(arrays["sigma"], np.float64)
    if mu.ndim != 1 or sigma.shape != (mu.shape[0],) * 2:
        raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} are not (D,) and (D, D)")
    return mu, sigma, arrays


def load_statistics(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """(mu, sigma) from a stats .npz: ours, or pytorch-fid's `--save-stats` files."""
    mu, sigma, _ = _read_statistics(path, ("mu", "sigma"))
    return mu, sigma


def _trace_sqrt_product(sigma1: np.ndarray, sigma2: np.ndarray) -> float:
    """tr sqrtm(sigma1 @ sigma2) for covariances.

    sigma1 sigma2 has the eigenvalues of the symmetric PSD s1^(1/2) sigma2 s1^(1/2) (AB and BA share
    them), so the trace is the sum of their square roots. This avoids the general (Schur) sqrtm of a
    non-symmetric matrix, which pytorch-fid uses and which can break down on the nearly singular
    covariances of small sample sets (pytorch-fid then adds 1e-6 to the diagonals); the symmetric
    route needs no such offset and agrees with sqrtm wherever sqrtm works.
    """
    for name, sigma in (("sigma1", sigma1), ("sigma2", sigma2)):
        if not np.allclose(sigma, sigma.T, rtol=1e-5, atol=1e-8 * max(np.abs(sigma).max(), 1.0)):
            raise ValueError(f"{name} is not symmetric; expected a covariance matrix")
    values, vectors = np.linalg.eigh((sigma1 + sigma1.T) / 2)
    _check_nonnegative(values, "sigma1")
    root = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    product = root @ ((sigma2 + sigma2.T) / 2) @ root
    eigenvalues = np.linalg.eigvalsh((product + product.T) / 2)
    _check_nonnegative(eigenvalues, "sigma1 sigma2")
    return float(np.sum(np.sqrt(np.clip(eigenvalues, 0, None))))


def _check_nonnegative(eigenvalues: np.ndarray, name: str) -> None:
    """pytorch-fid's "Imaginary component" error: a square root that is not real beyond rounding."""
    imaginary = np.sqrt(max(-float(eigenvalues.min()), 0.0))
    if imaginary > _IMAGINARY_TOLERANCE:
        raise ValueError(f"Imaginary component {imaginary}: {name} has eigenvalue {eigenvalues.min()}; "
                         "expected positive semi-definite covariances")


def frechet_distance(mu1: Any, sigma1: Any, mu2: Any, sigma2: Any) -> float:
    """The Frechet distance between N(mu1, sigma1) and N(mu2, sigma2): FID when these are the
    Inception pool3 statistics of two image sets."""
    mu1, mu2 = np.atleast_1d(np.asarray(mu1, np.float64)), np.atleast_1d(np.asarray(mu2, np.float64))
    sigma1, sigma2 = np.atleast_2d(np.asarray(sigma1, np.float64)), np.atleast_2d(np.asarray(sigma2, np.float64))
    if mu1.shape != mu2.shape or mu1.ndim != 1:
        raise ValueError(f"mean vectors of different or wrong shapes: {mu1.shape} and {mu2.shape}")
    if sigma1.shape != sigma2.shape or sigma1.shape != (mu1.shape[0],) * 2:
        raise ValueError(f"covariances {sigma1.shape} and {sigma2.shape} do not fit means of shape {mu1.shape}")
    for name, value in (("mu1", mu1), ("sigma1", sigma1), ("mu2", mu2), ("sigma2", sigma2)):
        if not np.isfinite(value).all():
            raise ValueError(f"{name} contains NaN or inf")
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * _trace_sqrt_product(sigma1, sigma2))


def _polynomial_kernel(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return (x @ y.T / x.shape[1] + 1.0) ** 3


def _unbiased_mmd2(x: np.ndarray, y: np.ndarray) -> float:
    """MMD^2 with the diagonals of k(x, x) and k(y, y) left out (torch-fidelity's "unbiased" estimate)."""
    m = len(x)
    k_xx, k_yy, k_xy = _polynomial_kernel(x, x), _polynomial_kernel(y, y), _polynomial_kernel(x, y)
    within = (k_xx.sum() - np.trace(k_xx) + k_yy.sum() - np.trace(k_yy)) / (m * (m - 1))
    return float(within - 2 * k_xy.sum() / (m * m))


def kernel_inception_distance(features1: Any, features2: Any, num_subsets: int = 100, subset_size: int = 1000,
                              seed: int = KID_SEED) -> tuple[float, float]:
    """(mean, std) of the unbiased polynomial-kernel MMD^2 over `num_subsets` pairs of random subsets
    of `subset_size` rows of (N1, D) and (N2, D) features. Values slightly below 0 are valid (nearly
    equal distributions)."""
    features1, features2 = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if features1.ndim != 2 or features2.ndim != 2 or features1.shape[1] != features2.shape[1]:
        raise ValueError(f"expected (N1, D) and (N2, D) features, got {features1.shape} and {features2.shape}")
    if not 2 <= subset_size <= min(len(features1), len(features2)):
        raise ValueError(f"KID subset_size {subset_size} must be in [2, {min(len(features1), len(features2))}] "
                         f"(the smaller of the two sets has {min(len(features1), len(features2))} rows); "
                         "pass a smaller subset_size")
    if num_subsets < 1:
        raise ValueError(f"num_subsets must be >= 1, got {num_subsets}")
    rng = np.random.RandomState(seed)  # torch-fidelity's generator and draw order, so its subsets
    mmds = np.zeros(num_subsets)
    for index in range(num_subsets):
        subset1 = features1[rng.choice(len(features1), subset_size, replace=False)]
        subset2 = features2[rng.choice(len(features2), subset_size, replace=False)]
        mmds[index] = _unbiased_mmd2(subset1, subset2)
    return float(mmds.mean()), float(mmds.std())
