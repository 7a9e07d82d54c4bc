"""Data handling for dynlp: CoNLL-U and PTB-tree I/O, vocabularies, batching, dataset registry.

Everything here depends only on numpy and the standard library; dynlp.data must not import
any other part of dynlp.
"""

from dynlp.data.batching import batches
from dynlp.data.conllu import (
    CoNLLUError,
    Sentence,
    SentenceList,
    Token,
    check_annotation,
    parse_conllu,
    read_conllu,
    write_conllu,
)
from dynlp.data.files import atomic_write, input_problem, write_text_atomic
from dynlp.data.registry import DATASETS, DataError, Dataset, fetch, list_datasets
from dynlp.data.trees import (
    Tree,
    TreeError,
    binarize,
    binary_label,
    fine_label,
    parse_tree,
    read_trees,
    write_trees,
)
from dynlp.data.vocab import Vocab

__all__ = [
    "CoNLLUError",
    "DATASETS",
    "DataError",
    "Dataset",
    "Sentence",
    "SentenceList",
    "Token",
    "Tree",
    "TreeError",
    "Vocab",
    "atomic_write",
    "batches",
    "binarize",
    "binary_label",
    "check_annotation",
    "fetch",
    "fine_label",
    "input_problem",
    "list_datasets",
    "parse_conllu",
    "parse_tree",
    "read_conllu",
    "read_trees",
    "write_conllu",
    "write_text_atomic",
    "write_trees",
]
