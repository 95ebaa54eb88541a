"""Pure functions for the tiny local lmms-eval tasks in this folder (``holov_tiny_gen``,
``holov_tiny_mc``), used by tests/test_lmms_eval_plugin.py to run ``python -m lmms_eval eval``
offline on the tiny checkpoint. The tasks' yaml files name these with ``!function utils.x``."""
from __future__ import annotations

import ast
from typing import Any, Dict, Iterable, List, Tuple

from lmms_eval.api.filter import Filter


def doc_to_visual(doc: Dict[str, Any]) -> List[Any]:
    """One PIL image per question (the parquet ``image`` column decodes to PIL)."""
    return [doc["image"].convert("RGB")]


def doc_to_text(doc: Dict[str, Any], lmms_eval_specific_kwargs: Dict[str, str] | None = None) -> str:
    kwargs = lmms_eval_specific_kwargs or {}
    return f"{kwargs.get('pre_prompt', '')}{doc['question']}{kwargs.get('post_prompt', '')}"


def doc_to_choice(doc: Dict[str, Any]) -> List[str]:
    return list(doc["choices"])


def process_results(doc: Dict[str, Any], results: List[str]) -> Dict[str, float]:
    """Exact match after lower-casing and stripping a final period (a random tiny model scores ~0)."""
    prediction = results[0].strip().lower().rstrip(".")
    return {"exact_match": float(prediction == str(doc["answer"]).strip().lower())}


def _as_loglikelihood(resp: Any) -> Tuple[float, bool]:
    if isinstance(resp, str):
        resp = ast.literal_eval(resp)
    if not (isinstance(resp, (tuple, list)) and len(resp) == 2 and isinstance(resp[0], (int, float)) and isinstance(resp[1], bool)):
        raise ValueError(f"expected a loglikelihood response (float, bool) or its str(), got {resp!r}")
    return float(resp[0]), bool(resp[1])


class LoglikelihoodFirst(Filter):
    """``take_first`` for loglikelihood responses that also undoes lmms-eval 0.7.x's
    stringification: its evaluator passes every model output through
    ``api.instance.unwrap_generation_output``, which turns a ``(loss, is_greedy)`` tuple into
    the string ``"(loss, is_greedy)"``, and ``multiple_choice`` scoring then fails with
    "too many values to unpack". Responses that are already tuples pass through."""

    def apply(self, resps: Iterable[List[Any]], docs) -> List[Tuple[float, bool]]:
        return [_as_loglikelihood(r[0]) for r in resps]
