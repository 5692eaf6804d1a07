"""The one JSON policy of results: +-inf as "inf"/"-inf", NaN as null, strict JSON out."""

import json
import math
from dataclasses import dataclass

import numpy as np
import pytest
import torch

from marginkit.results.jsonio import decode_float, dumps, read_json, to_jsonable, write_json


@dataclass
class _Row:
    d: float
    tag: str


def test_policy_and_round_trip(tmp_path):
    obj = {"a": float("inf"), "b": -np.inf, "c": float("nan"), "d": np.float32(0.5), "e": np.int64(3),
           "f": np.array([1.0, np.inf]), "g": torch.tensor([np.nan, 2.0]), "h": (True, np.bool_(False)),
           "row": _Row(math.inf, "x"), 4: None}
    text = dumps(obj)
    back = json.loads(text)  # strict: no Infinity / NaN tokens
    assert "Infinity" not in text and "NaN" not in text
    assert back == {"a": "inf", "b": "-inf", "c": None, "d": 0.5, "e": 3, "f": [1.0, "inf"], "g": [None, 2.0],
                    "h": [True, False], "row": {"d": "inf", "tag": "x"}, "4": None}
    assert [decode_float(back[k]) for k in "abd"] == [math.inf, -math.inf, 0.5] and math.isnan(decode_float(None))
    path = write_json(tmp_path / "x.json", obj)
    assert read_json(path) == back
    with pytest.raises(ValueError, match="results JSON policy"):
        decode_float("infinite")


def test_consistency_report_uses_the_policy():
    from marginkit.consistency import evaluate

    assert evaluate.to_jsonable is to_jsonable
