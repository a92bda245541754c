"""Linear probes: calibrated classifiers on a model's ECG embeddings, one file per label set,
stored beside the model's weights (``<weights folder>/probes/<labelset>.json``).

A probe is logistic regression on L2-normalised, standardised embeddings:

- exclusive sets (rhythms): one multinomial (softmax) regression over the labels the training
  data shows; probabilities sum to 1, the top label is the record's rhythm;
- multi-label sets (diagnoses): one binary logistic regression per label.

Labels of the set that the training data never showed (too few positives) are *untrained*: their
probability is NaN and they are never predicted. Each trained label carries the threshold chosen
by cross-validation by patient (ecgbatch.training.probes); a label is predicted when its
probability reaches it (for an exclusive set: the top label, plus any other above threshold).

A probe records the weights hash of the model whose embeddings it was fitted on, and refuses
embeddings of any other model (ProbeMismatchError). Numpy + scipy only.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from scipy.special import expit

PROBE_FORMAT = 1
PROBES_SUBDIR = "probes"


class ProbeError(ValueError):
    """A probe file that cannot be used."""

    kind = "probe_error"


class ProbeFormatError(ProbeError):
    kind = "probe_format"


class ProbeMismatchError(ProbeError):
    """The probe was fitted on another model's embeddings."""

    kind = "probe_model_mismatch"


# --- logistic regression --------------------------------------------------------------------

def fit_softmax(x: np.ndarray, y: np.ndarray, n_classes: int, l2: float,
                max_iter: int = 500) -> tuple[np.ndarray, np.ndarray]:
    """Multinomial logistic regression: mean cross-entropy + l2/2 ||W||^2 (bias unpenalised),
    minimised by L-BFGS. x [N, D], y [N] in 0..K-1 -> (W [K, D], b [K])."""
    from scipy.optimize import minimize
    from threadpoolctl import threadpool_limits

    x = np.asarray(x, np.float64)
    y = np.asarray(y, int)
    n, d = x.shape
    if n == 0 or y.min() < 0 or y.max() >= n_classes:
        raise ValueError(f"need N > 0 samples with classes in 0..{n_classes - 1}, got N={n}")
    onehot = np.eye(n_classes)[y]

    def loss(theta):
        w, b = theta[: n_classes * d].reshape(n_classes, d), theta[n_classes * d:]
        z = x @ w.T + b
        z -= z.max(axis=1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        p = np.exp(logp)
        f = -(onehot * logp).sum() / n + 0.5 * l2 * (w * w).sum()
        g = (p - onehot) / n
        return f, np.concatenate([(g.T @ x + l2 * w).ravel(), g.sum(axis=0)])

    # Small matrices: one BLAS thread is fastest, and many threads on a loaded machine are ~15x slower.
    with threadpool_limits(limits=1, user_api="blas"):
        res = minimize(loss, np.zeros(n_classes * (d + 1)), jac=True, method="L-BFGS-B",
                       options={"maxiter": max_iter})
    theta = res.x
    return theta[: n_classes * d].reshape(n_classes, d), theta[n_classes * d:]


def fit_binary(x: np.ndarray, y: np.ndarray, l2: float) -> tuple[np.ndarray, float]:
    """Binary logistic regression (the two-class softmax): -> (w [D], b), p = sigmoid(x w + b)."""
    w, b = fit_softmax(x, np.asarray(y, int), 2, l2)
    return w[1] - w[0], float(b[1] - b[0])


def unit_rows(emb) -> np.ndarray:
    f = np.asarray(emb, dtype=np.float64)
    if f.ndim != 2:
        raise ValueError(f"embeddings must be [N, D], got shape {f.shape!r}")
    return f / np.maximum(np.linalg.norm(f, axis=1, keepdims=True), 1e-12)


# --- the probe ----------------------------------------------------------------------------

@dataclass
class LinearProbe:
    labelset: str
    labels: tuple[str, ...]          # every label of the set: the output columns
    trained: tuple[str, ...]         # labels with a classifier (rows of weights)
    exclusive: bool
    mean: np.ndarray                 # [D] standardisation of the unit-norm embeddings
    scale: np.ndarray                # [D]
    weights: np.ndarray              # [K, D], K = len(trained)
    bias: np.ndarray                 # [K]
    thresholds: np.ndarray           # [K] chosen by cross-validation by patient
    model: dict = field(default_factory=dict)   # {"name", "weights_hash", "embed_dim"}
    info: dict = field(default_factory=dict)    # training data summary, cross-validated metrics

    def __post_init__(self):
        k, d = len(self.trained), len(self.mean)
        if not self.trained or any(t not in self.labels for t in self.trained):
            raise ProbeFormatError(f"probe {self.labelset!r}: trained labels {self.trained!r} must be "
                                   f"non-empty and among {self.labels!r}")
        shapes = {"weights": (np.shape(self.weights), (k, d)), "bias": (np.shape(self.bias), (k,)),
                  "thresholds": (np.shape(self.thresholds), (k,)), "scale": (np.shape(self.scale), (d,))}
        bad = {n: got for n, (got, want) in shapes.items() if tuple(got) != want}
        if bad:
            raise ProbeFormatError(f"probe {self.labelset!r}: shapes {bad} do not fit {k} labels x {d} dims")

    @property
    def untrained(self) -> tuple[str, ...]:
        return tuple(lab for lab in self.labels if lab not in self.trained)

    @property
    def embed_dim(self) -> int:
        return len(self.mean)

    def check_model(self, weights_hash: str | None, what: str = "these embeddings") -> None:
        """Refuse embeddings of another model than the one the probe was fitted on."""
        want = self.model.get("weights_hash")
        if want and weights_hash and want != weights_hash:
            raise ProbeMismatchError(
                f"the {self.labelset!r} probe was fitted on embeddings of {self.model.get('name')!r} with "
                f"weights {want!r}, but {what} come from weights {weights_hash!r}: refit it with "
                f"`ecgbatch train probe --labels {self.labelset}` or use --zero-shot")

    def _features(self, emb) -> np.ndarray:
        f = unit_rows(emb)
        if f.shape[1] != self.embed_dim:
            raise ValueError(f"probe {self.labelset!r} expects [N, {self.embed_dim}] embeddings, got {f.shape!r}")
        return (f - self.mean) / self.scale

    def trained_probabilities(self, emb) -> np.ndarray:
        """[N, K] probabilities of the trained labels (softmax rows, or independent sigmoids)."""
        z = self._features(emb) @ self.weights.T + self.bias
        if self.exclusive:
            z = z - z.max(axis=1, keepdims=True)
            e = np.exp(z)
            return e / e.sum(axis=1, keepdims=True)
        return expit(z)

    def probabilities(self, emb) -> np.ndarray:
        """[N, len(labels)] float32: calibrated probabilities, NaN for untrained labels."""
        return self.all_labels(self.trained_probabilities(emb))

    def all_labels(self, p_trained: np.ndarray) -> np.ndarray:
        """[N, K] trained-label probabilities -> [N, len(labels)] float32, NaN where untrained."""
        p = np.asarray(p_trained)
        out = np.full((p.shape[0], len(self.labels)), np.nan, dtype=np.float32)
        out[:, [self.labels.index(t) for t in self.trained]] = p
        return out

    def predict_trained(self, p_trained: np.ndarray) -> list[list[str]]:
        """Labels at or above their thresholds, most probable first; an exclusive set always
        names its top label."""
        out = []
        for row in np.asarray(p_trained):
            order = np.argsort(-row, kind="stable")
            keep = [j for j in order if row[j] >= self.thresholds[j]]
            if self.exclusive and (not keep or keep[0] != order[0]):
                keep = [int(order[0])] + [j for j in keep if j != order[0]]
            out.append([self.trained[j] for j in keep])
        return out

    def top(self, p_trained: np.ndarray) -> list[str]:
        return [self.trained[j] for j in np.argmax(np.asarray(p_trained), axis=1)]

    # --- files ----------------------------------------------------------------------------
    def to_dict(self) -> dict:
        r = lambda a: np.round(np.asarray(a, np.float64), 8).tolist()  # noqa: E731
        return {"format": PROBE_FORMAT, "kind": "linear-probe", "labelset": self.labelset,
                "labels": list(self.labels), "trained": list(self.trained), "exclusive": self.exclusive,
                "model": self.model, "thresholds": r(self.thresholds), "mean": r(self.mean),
                "scale": r(self.scale), "bias": r(self.bias), "weights": r(self.weights), "info": self.info}

    @classmethod
    def from_dict(cls, d: dict, where: str = "probe") -> "LinearProbe":
        if not isinstance(d, dict) or d.get("kind") != "linear-probe":
            raise ProbeFormatError(f"{where} is not a linear-probe file")
        if d.get("format") != PROBE_FORMAT:
            raise ProbeFormatError(f"{where} has format {d.get('format')!r}; this ecgbatch reads {PROBE_FORMAT}")
        try:
            return cls(str(d["labelset"]), tuple(d["labels"]), tuple(d["trained"]), bool(d["exclusive"]),
                       np.asarray(d["mean"], np.float64), np.asarray(d["scale"], np.float64),
                       np.asarray(d["weights"], np.float64), np.asarray(d["bias"], np.float64),
                       np.asarray(d["thresholds"], np.float64), dict(d.get("model") or {}),
                       dict(d.get("info") or {}))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ProbeError):
                raise
            raise ProbeFormatError(f"{where}: {type(exc).__name__}: {exc}") from None

    def save(self, path: str | Path) -> Path:
        """Atomic write (temporary file, then rename)."""
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        tmp.replace(p)
        return p

    @classmethod
    def load(cls, path: str | Path) -> "LinearProbe":
        p = Path(path)
        try:
            d = json.loads(p.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise ProbeFormatError(f"cannot read probe {str(p)!r}: {exc}") from None
        return cls.from_dict(d, where=str(p))


def probe_path(weights_folder: str | Path, labelset: str) -> Path:
    return Path(weights_folder) / PROBES_SUBDIR / f"{labelset}.json"


def find_probe(weights_folder: str | Path | None, labelset: str) -> Path | None:
    """The probe file of ``labelset`` beside a model's weights, or None."""
    if weights_folder is None:
        return None
    p = probe_path(weights_folder, labelset)
    return p if p.is_file() else None


def model_probe(model, labelset: str) -> LinearProbe | None:
    """The probe shipped beside an in-memory model's weights folder (``model.provenance``), or
    None; refused (ProbeMismatchError) if it was fitted on other weights. What a caller holding a
    model rather than a workspace uses (e.g. a report prompt built from calibrated labels):
    ``p = probe.trained_probabilities(model.embed_ecgs(x)); probe.predict_trained(p)``."""
    folder = (getattr(model, "provenance", None) or {}).get("folder")
    path = find_probe(folder, labelset)
    if path is None:
        return None
    probe = LinearProbe.load(path)
    probe.check_model(str(model.weights_hash), what="this model's embeddings")
    return probe
