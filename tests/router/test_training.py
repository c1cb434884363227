"""Training, evaluation and model files, through the commands users run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from router.features import FeatureSpec, Featurizer
from router.linear import LinearModel, ModelFileError
from router.pipeline import packaged_model_path

HELD_OUT = Path(__file__).parents[2] / "router" / "corpus" / "split" / "heldout.jsonl"


def switchboard(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "switchboard.cli", *args], capture_output=True, text=True, timeout=120
    )


def _examples(path: Path) -> Path:
    rows = [
        ("my card was charged twice for one order", "billing"),
        ("the invoice shows the wrong amount", "billing"),
        ("please refund the double payment", "billing"),
        ("where is my parcel, tracking has not moved", "shipping"),
        ("the courier never delivered my package", "shipping"),
        ("my delivery is late by a week", "shipping"),
    ] * 4
    path.write_text(
        "".join(json.dumps({"text": t, "department": d, "language": "en"}) + "\n" for t, d in rows)
    )
    return path


def test_train_then_eval_reports_per_department_and_language(tmp_path: Path) -> None:
    data = _examples(tmp_path / "train.jsonl")
    model = tmp_path / "model.npz"
    trained = switchboard("train", str(data), "-o", str(model))
    assert trained.returncode == 0, trained.stderr
    result = switchboard("eval", str(data), "--model", str(model), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n"] == 24 and report["accuracy"] == 1.0
    assert set(report["per_department"]) == {"billing", "shipping"}
    assert report["per_language"]["en"]["n"] == 24


def test_train_never_overwrites_the_packaged_model(tmp_path: Path) -> None:
    data = _examples(tmp_path / "train.jsonl")
    before = packaged_model_path("department").read_bytes()
    result = switchboard("train", str(data), "-o", str(packaged_model_path("department")))
    assert result.returncode == 2
    assert packaged_model_path("department").read_bytes() == before


def test_the_packaged_model_scores_the_held_out_split_it_never_saw() -> None:
    result = switchboard("eval", str(HELD_OUT), "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["n"] > 1000
    assert set(report["per_language"]) >= {"en", "es", "hi", "bn", "ta", "tl"}
    assert 0.0 < report["macro_f1"] <= 1.0


def test_a_saved_model_scores_the_same_after_loading(tmp_path: Path) -> None:
    model = LinearModel.load(packaged_model_path("department"))
    path = tmp_path / "copy.npz"
    model.save(path)
    again = LinearModel.load(path)
    features = Featurizer(model.spec).transform(["where is my refund", "ஆர்டர் எங்கே"])
    assert np.allclose(model.probabilities(features), again.probabilities(features), atol=1e-3)


def test_a_format_1_model_still_loads_with_the_weighting_it_was_trained_with(tmp_path: Path) -> None:
    spec = FeatureSpec(bits=10)
    features = Featurizer(spec).transform(["refund refund", "parcel"])
    weights = np.zeros((spec.dimensions, 2), dtype=np.float32)
    weights[features.buckets[features.documents == 0], 0] = 1.0
    meta = {
        "format": "switchboard-linear/1",
        "name": "old",
        "classes": ["billing", "shipping"],
        "spec": {"bits": 10, "char_orders": [1, 2, 3, 4, 5], "words": True, "word_bigrams": True},
        "temperature": 1.0,
        "info": {},
    }
    path = tmp_path / "old.npz"
    np.savez(
        path,
        meta=np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8),
        weights=weights.astype(np.float16),
        bias=np.zeros(2, dtype=np.float32),
    )
    model = LinearModel.load(path)
    assert model.idf is None
    # Format 1 weighed each occurrence 1/sqrt(n): summed over a message, the squares make 1.
    values = features.weights(None)[features.documents == 1]
    counts = features.counts[features.documents == 1]
    assert np.isclose(float((values**2 / counts).sum()), 1.0, atol=1e-4)
    assert model.classes[int(model.scores(features)[0].argmax())] == "billing"


def test_a_file_that_is_not_a_model_is_refused_with_the_reason(tmp_path: Path) -> None:
    path = tmp_path / "model.npz"
    path.write_bytes(b"not a numpy archive")
    with pytest.raises(ModelFileError, match="not a Switchboard model"):
        LinearModel.load(path)
    with pytest.raises(ModelFileError, match="no such model file"):
        LinearModel.load(tmp_path / "missing.npz")
