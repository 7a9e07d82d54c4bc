"""Evaluation metrics shared by the recipes: label accuracy and dependency attachment scores.

Scores are percentages (0-100). UAS and LAS follow the CoNLL 2018 shared task evaluation with gold
tokenization: every syntactic word counts (punctuation too), and LAS compares only the universal
part of a relation (`nsubj:pass` counts as `nsubj`). Must not import recipes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def _flatten(items: Sequence[Any]) -> list:
    """A list of sequences becomes one flat list; a flat list stays as it is."""
    if items and isinstance(items[0], (list, tuple)):
        return [item for sequence in items for item in sequence]
    return list(items)


def accuracy(gold: Sequence[Any], predicted: Sequence[Any]) -> float:
    """Percentage of positions where the predicted label equals the gold one.

    Takes flat label lists or lists of per-sentence label lists (both sides alike); 0.0 for no
    labels at all. Raises ValueError when the two do not line up.
    """
    if len(gold) != len(predicted):
        raise ValueError(f"accuracy: {len(gold)} gold and {len(predicted)} predicted items")
    gold_flat, predicted_flat = _flatten(gold), _flatten(predicted)
    if len(gold_flat) != len(predicted_flat):
        raise ValueError(f"accuracy: {len(gold_flat)} gold and {len(predicted_flat)} predicted "
                         "labels")
    if not gold_flat:
        return 0.0
    correct = sum(1 for g, p in zip(gold_flat, predicted_flat) if g == p)
    return 100.0 * correct / len(gold_flat)


def universal_relation(deprel: str) -> str:
    """The universal part of a dependency relation: `nsubj:pass` -> `nsubj`."""
    return deprel.split(":", 1)[0]


def attachment_scores(gold_sentences: Sequence[Any], predicted_heads: Sequence[Sequence[int]],
                      predicted_deprels: Sequence[Sequence[str]]) -> dict[str, float]:
    """{"uas": .., "las": ..} in percent over all words of the gold sentences.

    gold_sentences: objects with `.heads` (ints, 0 is the root) and `.deprels`, one entry per
    syntactic word (such as `dynlp.data.Sentence`); the predictions give one head and one
    relation per word of each sentence. A word counts for UAS when its head is right and for
    LAS when, in addition, its relation without subtype is right.
    """
    if not len(gold_sentences) == len(predicted_heads) == len(predicted_deprels):
        raise ValueError(f"attachment_scores: {len(gold_sentences)} gold sentences, "
                         f"{len(predicted_heads)} head and {len(predicted_deprels)} relation "
                         "predictions")
    words = heads_right = labels_right = 0
    for number, (sentence, heads, deprels) in enumerate(
            zip(gold_sentences, predicted_heads, predicted_deprels)):
        gold_heads, gold_deprels = sentence.heads, sentence.deprels
        if not len(gold_heads) == len(heads) == len(deprels):
            raise ValueError(f"attachment_scores: sentence {number} has {len(gold_heads)} words, "
                             f"{len(heads)} predicted heads and {len(deprels)} relations")
        for gold_head, gold_rel, head, rel in zip(gold_heads, gold_deprels, heads, deprels):
            words += 1
            if int(head) == gold_head:
                heads_right += 1
                if universal_relation(rel) == universal_relation(gold_rel):
                    labels_right += 1
    if not words:
        return {"uas": 0.0, "las": 0.0}
    return {"uas": 100.0 * heads_right / words, "las": 100.0 * labels_right / words}
