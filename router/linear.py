"""Linear classifiers over hashed n-gram features, saved as plain numpy archives.

One shape serves every model the router ships (department, language, escalation): the inverse
document frequencies of its training features, a weight matrix ``dimensions x classes``, a bias
per class and a softmax temperature fitted on held-out data so that ``confidence`` means what it
says. Files are ``.npz`` archives read with
``allow_pickle=False``: loading a model a user names never executes code from it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from models.errors import InvalidInput
from router.features import Features, FeatureSpec

__all__ = ["FORMAT", "LinearModel", "ModelFileError", "fit_linear", "softmax"]

FORMAT = "switchboard-linear/2"
_FORMATS = ("switchboard-linear/1", FORMAT)  # format 1: no inverse document frequencies


class ModelFileError(InvalidInput):
    """A model file that is missing, unreadable or of another format; the message says which."""


@dataclass(frozen=True)
class LinearModel:
    """A trained linear classifier: ``softmax((X @ weights + bias) / temperature)``."""

    name: str
    classes: tuple[str, ...]
    spec: FeatureSpec
    weights: npt.NDArray[np.float32]
    bias: npt.NDArray[np.float32]
    temperature: float = 1.0
    info: dict[str, Any] | None = None
    idf: npt.NDArray[np.float32] | None = None  # None for models saved in format 1

    def scores(self, features: Features) -> npt.NDArray[np.float32]:
        """Raw class scores, one row per message of the batch."""
        if features.dimensions != self.spec.dimensions:
            raise ValueError("features were hashed for another model")
        result: npt.NDArray[np.float32] = features.product(self.weights, self.idf) + self.bias
        return result

    def probabilities(self, features: Features) -> npt.NDArray[np.float32]:
        """Calibrated class probabilities, one row per message (rows sum to 1)."""
        return softmax(self.scores(features) / self.temperature)

    def save(self, path: Path) -> None:
        """Write the model as an ``.npz``; the write is atomic (temp file + rename).

        Not compressed: hashed weights hardly compress (a quarter smaller), and reading them
        raw saves ``classify`` a tenth of a second of its start-up.
        """
        meta = {
            "format": FORMAT,
            "name": self.name,
            "classes": list(self.classes),
            "spec": asdict(self.spec),
            "temperature": self.temperature,
            "info": self.info or {},
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = path.with_name(f".{path.name}.tmp")
        if self.idf is None:
            raise ValueError("a model without inverse document frequencies cannot be saved")
        with temporary.open("wb") as handle:
            np.savez(
                handle,
                meta=np.frombuffer(json.dumps(meta, ensure_ascii=False).encode(), dtype=np.uint8),
                weights=self.weights.astype(np.float16),
                bias=self.bias.astype(np.float32),
                idf=self.idf.astype(np.float16),
            )
        temporary.replace(path)

    @classmethod
    def load(cls, path: Path) -> LinearModel:
        """Read a model written by :meth:`save`; raises :class:`ModelFileError` with the reason."""
        try:
            with np.load(path, allow_pickle=False) as archive:
                meta = json.loads(archive["meta"].tobytes().decode())
                weights = archive["weights"].astype(np.float32)
                bias = archive["bias"].astype(np.float32)
                idf = archive["idf"].astype(np.float32) if "idf" in archive.files else None
        except FileNotFoundError as error:
            raise ModelFileError(f"{path}: no such model file") from error
        except (OSError, ValueError, KeyError) as error:
            raise ModelFileError(f"{path}: not a Switchboard model ({error})") from error
        if not isinstance(meta, dict) or meta.get("format") not in _FORMATS:
            raise ModelFileError(f"{path}: not a {FORMAT} model file")
        if (idf is None) != (meta["format"] == _FORMATS[0]):
            raise ModelFileError(f"{path}: damaged model file (inverse document frequencies)")
        try:
            spec = FeatureSpec(
                bits=int(meta["spec"]["bits"]),
                char_orders=tuple(int(n) for n in meta["spec"]["char_orders"]),
                words=bool(meta["spec"]["words"]),
                word_bigrams=bool(meta["spec"]["word_bigrams"]),
            )
            classes = tuple(str(c) for c in meta["classes"])
            model = cls(
                name=str(meta["name"]),
                classes=classes,
                spec=spec,
                weights=weights,
                bias=bias,
                temperature=float(meta.get("temperature", 1.0)),
                info=dict(meta.get("info") or {}),
                idf=idf,
            )
        except (KeyError, TypeError, ValueError) as error:
            raise ModelFileError(f"{path}: damaged model metadata ({error})") from error
        if weights.shape != (spec.dimensions, len(classes)) or bias.shape != (len(classes),):
            raise ModelFileError(f"{path}: weights do not match the model's classes and features")
        if idf is not None and idf.shape != (spec.dimensions,):
            raise ModelFileError(f"{path}: inverse document frequencies do not match the features")
        return model


def softmax(scores: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    shifted = scores - scores.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    result: npt.NDArray[np.float32] = exp / exp.sum(axis=1, keepdims=True)
    return result


def _fit_temperature(scores: npt.NDArray[np.float32], labels: npt.NDArray[np.int64]) -> float:
    """The softmax temperature that minimises the negative log-likelihood of held-out labels."""
    best, best_loss = 1.0, math.inf
    for temperature in np.exp(np.linspace(math.log(0.02), math.log(5.0), 80)):
        probabilities = softmax(scores / temperature)
        loss = -float(np.mean(np.log(probabilities[np.arange(len(labels)), labels] + 1e-9)))
        if loss < best_loss:
            best, best_loss = float(temperature), loss
    return best


Kind = Literal["svm", "logistic"]


def _estimator(kind: Kind, regularization: float) -> Any:
    from sklearn.linear_model import LogisticRegression  # training only: keeps classify's start-up fast
    from sklearn.svm import LinearSVC

    if kind == "svm":
        return LinearSVC(C=regularization, max_iter=5000)
    return LogisticRegression(C=regularization, max_iter=400, tol=1e-3)


def _softmax_scores(decision: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Decision values in the shape the softmax reads: two classes become two columns."""
    if decision.ndim == 1:
        return np.stack([-decision / 2, decision / 2], axis=1)
    return decision


def fit_linear(
    name: str,
    features: Features,
    labels: Sequence[str],
    *,
    spec: FeatureSpec,
    kind: Kind = "logistic",
    regularization: float = 20.0,
    info: dict[str, Any] | None = None,
    idf: npt.NDArray[np.float32] | None = None,
) -> LinearModel:
    """Train a linear classifier whose softmax temperature is fitted on held-out examples.

    ``svm`` (a linear SVM) separates the departments best on the team corpus; its margins are
    turned into probabilities by the same softmax, with the temperature that makes them
    calibrated on a held-out fifth (every fifth example). The final weights are then trained
    on every example. *idf* defaults to the inverse document frequencies of *features*; models
    trained on the same examples can share one array (the router then scores them together).
    """
    classes = tuple(sorted(set(labels)))
    if len(classes) < 2:
        raise InvalidInput("training needs examples of at least two classes")
    index = {c: i for i, c in enumerate(classes)}
    y = np.array([index[label] for label in labels], dtype=np.int64)
    if idf is None:
        idf = features.inverse_document_frequencies()
    matrix = features.canonical_matrix(idf)
    everything = np.arange(len(y))
    held_out = everything % 5 == 4
    temperature = 1.0
    if held_out.sum() >= 20 and len(set(y[~held_out].tolist())) == len(classes):
        estimator = _estimator(kind, regularization).fit(matrix[~held_out], y[~held_out])
        decision = estimator.decision_function(matrix[held_out]).astype(np.float32)
        temperature = _fit_temperature(_softmax_scores(decision), y[held_out])
    estimator = _estimator(kind, regularization).fit(matrix, y)
    coefficients = estimator.coef_
    intercept = np.atleast_1d(estimator.intercept_)
    if len(classes) == 2:  # one margin for two classes: expand to the two-column softmax form
        coefficients = np.vstack([-coefficients[0] / 2, coefficients[0] / 2])
        intercept = np.array([-intercept[0] / 2, intercept[0] / 2])
    return LinearModel(
        name=name,
        classes=classes,
        spec=spec,
        weights=np.ascontiguousarray(coefficients.T, dtype=np.float32),
        bias=intercept.astype(np.float32),
        temperature=temperature,
        info={**(info or {}), "estimator": kind, "regularization": regularization},
        idf=idf,
    )
