"""Which embedding space a vector lives in: model name, weights hash, preprocessing hash, dimension.

An index stores the signature of the vectors it was built from; queries and updates must come
from the same space (same model and weights, same dimension; for ECG-side vectors also the same
preprocessing), otherwise :class:`IndexModelMismatchError` is raised.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Mapping

from ecgbatch.index.errors import IndexModelMismatchError


@dataclass(frozen=True)
class ModelSignature:
    """The embedding space of a set of vectors.

    ``preprocess_hash`` is the hash of the ECG PreprocessConfig used before the ECG tower; text
    queries have none (``None``) and are then checked on model, weights and dimension only.
    """

    model: str
    weights_hash: str
    dim: int
    preprocess_hash: str | None = None

    def __post_init__(self):
        if not isinstance(self.model, str) or not self.model:
            raise ValueError(f"ModelSignature.model must be a non-empty string, got {self.model!r}")
        if not isinstance(self.weights_hash, str) or not self.weights_hash:
            raise ValueError(
                f"ModelSignature.weights_hash must be a non-empty string, got {self.weights_hash!r}"
            )
        if isinstance(self.dim, bool) or not isinstance(self.dim, int) or self.dim <= 0:
            raise ValueError(f"ModelSignature.dim must be a positive int, got {self.dim!r}")

    @classmethod
    def coerce(cls, value: "ModelSignature | Mapping[str, Any]") -> "ModelSignature":
        if isinstance(value, ModelSignature):
            return value
        if isinstance(value, Mapping):
            known = {"model", "weights_hash", "dim", "preprocess_hash"}
            extra = set(value) - known
            if extra:
                raise ValueError(f"unknown ModelSignature fields {sorted(extra)!r}")
            return cls(**dict(value))
        raise TypeError(f"expected a ModelSignature or a mapping, got {type(value).__name__}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def check_query(self, query: "ModelSignature | Mapping[str, Any] | None", dim: int) -> None:
        """Refuse query vectors of another dimension or from another model/weights/preprocessing.

        ``query`` None checks the dimension only (for callers that cannot say where the vectors
        came from); pipelines and encoders should always pass their signature.
        """
        if dim != self.dim:
            raise IndexModelMismatchError(
                f"query vectors have dimension {dim}, but the index was built from "
                f"{self.model} (weights {self.weights_hash}) vectors of dimension {self.dim}"
            )
        if query is None:
            return
        q = ModelSignature.coerce(query)
        problems = []
        if q.dim != self.dim:
            problems.append(f"dimension {q.dim} != {self.dim}")
        if q.model != self.model:
            problems.append(f"model {q.model!r} != {self.model!r}")
        if q.weights_hash != self.weights_hash:
            problems.append(f"weights hash {q.weights_hash!r} != {self.weights_hash!r}")
        if (
            q.preprocess_hash is not None
            and self.preprocess_hash is not None
            and q.preprocess_hash != self.preprocess_hash
        ):
            problems.append(f"preprocess hash {q.preprocess_hash!r} != {self.preprocess_hash!r}")
        if problems:
            raise IndexModelMismatchError(
                "query embeddings come from another embedding space than the index ("
                + "; ".join(problems)
                + "): re-encode the query with the index's model or rebuild the index"
            )

    def check_same_space(self, other: "ModelSignature", what: str = "new embeddings") -> None:
        """Stricter check for vectors that are added to the index: everything must match."""
        problems = [
            f"{name} {getattr(other, name)!r} != {getattr(self, name)!r}"
            for name in ("model", "weights_hash", "preprocess_hash", "dim")
            if getattr(other, name) != getattr(self, name)
        ]
        if problems:
            raise IndexModelMismatchError(
                f"{what} come from another embedding space than the index ("
                + "; ".join(problems)
                + "): rebuild the index instead of updating it"
            )
