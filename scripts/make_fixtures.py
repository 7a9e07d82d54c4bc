"""Write the tiny made-up fixtures in data/ (CoNLL-U and SST-style trees), deterministically.

Owns the template grammars and sentiment lexicon behind data/tiny-*.conllu and
data/tiny-*.trees. Standard library only (no dynlp import): re-running with the same
seed rewrites byte-identical files.  Usage: python scripts/make_fixtures.py [--out DIR]
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

SEED = 20240611
SPLIT_SIZES = (("train", 60), ("dev", 20), ("test", 20))
MULTIWORD_SENTENCE = 7
EMPTY_NODE_SENTENCE = 23

# form -> (lemma, UPOS, XPOS, FEATS)
DETERMINERS = {
    "the": ("the", "DET", "DT", "Definite=Def"),
    "a": ("a", "DET", "DT", "Definite=Ind"),
    "this": ("this", "DET", "DT", "PronType=Dem"),
}
ADJECTIVES = ["big", "small", "red", "old", "happy", "quiet", "green", "young"]
NOUNS = ["dog", "cat", "bird", "man", "woman", "child", "ball", "house", "car", "book"]
NAMES = ["Anna", "Tom", "Maria", "Paul"]
PRONOUNS = ["she", "he", "it"]
TRANSITIVE = {
    "saw": "see", "liked": "like", "found": "find", "chased": "chase",
    "took": "take", "watched": "watch",
}
INTRANSITIVE = {"slept": "sleep", "ran": "run", "smiled": "smile", "waited": "wait"}
PREPOSITIONS = ["in", "on", "near", "with"]
ADVERBS = ["quickly", "slowly", "often", "today"]

SENTIMENT = {
    "good": 1, "fine": 1, "nice": 1, "funny": 1,
    "great": 2, "brilliant": 2, "wonderful": 2,
    "bad": -1, "dull": -1, "boring": -1,
    "awful": -2, "terrible": -2, "dreadful": -2,
}
TREE_NOUNS = ["movie", "film", "story", "plot", "acting", "script"]
TREE_DETERMINERS = ["the", "a", "this"]
TREE_VERBS = ["is", "was", "seems"]


class Word:
    """One syntactic word of a generated sentence; head is a 1-based index (0 = root)."""

    def __init__(self, form: str, lemma: str, upos: str, xpos: str, feats: str) -> None:
        self.form, self.lemma, self.upos, self.xpos, self.feats = form, lemma, upos, xpos, feats
        self.head = 0
        self.deprel = "root"
        self.deps = ""

    def line(self, ident: str, space_after: bool) -> str:
        deps = self.deps or f"{self.head}:{self.deprel}"
        misc = "_" if space_after else "SpaceAfter=No"
        columns = [ident, self.form, self.lemma, self.upos, self.xpos, self.feats,
                   str(self.head), self.deprel, deps, misc]
        return "\t".join(columns)


def noun_phrase(rng: random.Random, words: list[Word], allow_pronoun: bool = True) -> int:
    """Append a noun phrase to words; return the 1-based index of its head."""
    choice = rng.random()
    if allow_pronoun and choice < 0.15:
        form = rng.choice(PRONOUNS)
        words.append(Word(form, form, "PRON", "PRP", "PronType=Prs"))
        return len(words)
    if choice < 0.3:
        name = rng.choice(NAMES)
        words.append(Word(name, name, "PROPN", "NNP", "Number=Sing"))
        return len(words)
    start = len(words)
    determiner = rng.choice(sorted(DETERMINERS))
    words.append(Word(determiner, *DETERMINERS[determiner]))
    for _ in range(rng.choice((0, 0, 1, 1, 2))):
        adjective = rng.choice(ADJECTIVES)
        words.append(Word(adjective, adjective, "ADJ", "JJ", "Degree=Pos"))
    noun = rng.choice(NOUNS)
    words.append(Word(noun, noun, "NOUN", "NN", "Number=Sing"))
    head = len(words)
    for position in range(start, head - 1):
        words[position].head = head
        words[position].deprel = "det" if position == start else "amod"
    return head


def attach(words: list[Word], dependent: int, head: int, deprel: str) -> None:
    words[dependent - 1].head = head
    words[dependent - 1].deprel = deprel


def verb(form: str, lemma: str) -> Word:
    return Word(form, lemma, "VERB", "VBD", "Tense=Past")


def plain_sentence(rng: random.Random) -> list[Word]:
    """A sentence from the template grammar: subject, predicate, optional object/PP/adverb."""
    words: list[Word] = []
    subject = noun_phrase(rng, words)
    template = rng.choice(("transitive", "transitive", "intransitive", "copula", "oblique"))
    if template == "copula":
        words.append(Word("was", "be", "AUX", "VBD", "Tense=Past"))
        adjective = rng.choice(ADJECTIVES)
        words.append(Word(adjective, adjective, "ADJ", "JJ", "Degree=Pos"))
        root = len(words)
        attach(words, root - 1, root, "cop")
    elif template == "intransitive":
        form = rng.choice(sorted(INTRANSITIVE))
        words.append(verb(form, INTRANSITIVE[form]))
        root = len(words)
        if rng.random() < 0.5:
            adverb = rng.choice(ADVERBS)
            words.append(Word(adverb, adverb, "ADV", "RB", "_"))
            attach(words, len(words), root, "advmod")
    else:
        form = rng.choice(sorted(TRANSITIVE))
        words.append(verb(form, TRANSITIVE[form]))
        root = len(words)
        attach(words, noun_phrase(rng, words, allow_pronoun=False), root, "obj")
    if template == "oblique" or (template == "transitive" and rng.random() < 0.3):
        preposition = rng.choice(PREPOSITIONS)
        words.append(Word(preposition, preposition, "ADP", "IN", "_"))
        case = len(words)
        oblique = noun_phrase(rng, words, allow_pronoun=False)
        attach(words, case, oblique, "case")
        attach(words, oblique, root, "obl")
        words[oblique - 1].deps = f"{root}:obl:{preposition}"
    attach(words, subject, root, "nsubj")
    words[root - 1].head = 0
    words[root - 1].deprel = "root"
    words.append(Word(".", ".", "PUNCT", ".", "_"))
    attach(words, len(words), root, "punct")
    return words


def capitalize(words: list[Word]) -> None:
    words[0].form = words[0].form[0].upper() + words[0].form[1:]


def render(
    words: list[Word],
    sent_id: str,
    newdoc: str | None = None,
    multiword: tuple[int, int, str] | None = None,
    empty_node: tuple[int, str] | None = None,
) -> str:
    """CoNLL-U block for words; multiword is (first, last, surface form) and empty_node is
    (word index it follows, full line)."""
    count = len(words)
    pieces = []
    index = 1
    while index <= count:
        surface, last = words[index - 1].form, index
        if multiword is not None and index == multiword[0]:
            surface, last = multiword[2], multiword[1]
        pieces.append(surface)
        if last < count and words[last].upos != "PUNCT":
            pieces.append(" ")
        index = last + 1
    lines = []
    for index, word in enumerate(words, start=1):
        if multiword is not None and index == multiword[0]:
            lines.append("\t".join([f"{multiword[0]}-{multiword[1]}", multiword[2]] + ["_"] * 8))
        lines.append(word.line(str(index), index == count or words[index].upos != "PUNCT"))
        if empty_node is not None and index == empty_node[0]:
            lines.append(empty_node[1])
    comments = [f"# newdoc id = {newdoc}"] if newdoc else []
    comments += [f"# sent_id = {sent_id}", f"# text = {''.join(pieces)}"]
    return "\n".join(comments + lines) + "\n\n"


def multiword_sentence(rng: random.Random, sent_id: str) -> str:
    """NP doesn't VERB NP . with a 4-5 style multiword token for doesn't."""
    words: list[Word] = []
    subject = noun_phrase(rng, words, allow_pronoun=False)
    words.append(Word("does", "do", "AUX", "VBZ", "Tense=Pres"))
    auxiliary = len(words)
    words.append(Word("n't", "not", "PART", "RB", "Polarity=Neg"))
    form = rng.choice(sorted(TRANSITIVE))
    words.append(Word(TRANSITIVE[form], TRANSITIVE[form], "VERB", "VB", "VerbForm=Inf"))
    root = len(words)
    attach(words, noun_phrase(rng, words, allow_pronoun=False), root, "obj")
    attach(words, subject, root, "nsubj")
    attach(words, auxiliary, root, "aux")
    attach(words, auxiliary + 1, root, "advmod")
    words[root - 1].head = 0
    words[root - 1].deprel = "root"
    words.append(Word(".", ".", "PUNCT", ".", "_"))
    attach(words, len(words), root, "punct")
    capitalize(words)
    return render(words, sent_id, multiword=(auxiliary, auxiliary + 1, "doesn't"))


def empty_node_sentence(rng: random.Random, sent_id: str) -> str:
    """Gapping: NP VERB NP and NP NP . with an empty node for the elided second verb."""
    words: list[Word] = []
    subject = noun_phrase(rng, words, allow_pronoun=False)
    form = rng.choice(sorted(TRANSITIVE))
    words.append(verb(form, TRANSITIVE[form]))
    root = len(words)
    attach(words, noun_phrase(rng, words, allow_pronoun=False), root, "obj")
    words.append(Word("and", "and", "CCONJ", "CC", "_"))
    conjunction = len(words)
    second_subject = noun_phrase(rng, words, allow_pronoun=False)
    gap = len(words)
    second_object = noun_phrase(rng, words, allow_pronoun=False)
    attach(words, subject, root, "nsubj")
    attach(words, second_subject, root, "conj")
    attach(words, conjunction, second_subject, "cc")
    attach(words, second_object, second_subject, "orphan")
    empty = f"{gap}.1"
    words[second_subject - 1].deps = f"{empty}:nsubj"
    words[second_object - 1].deps = f"{empty}:obj"
    words[conjunction - 1].deps = f"{empty}:cc"
    words[root - 1].head = 0
    words[root - 1].deprel = "root"
    words.append(Word(".", ".", "PUNCT", ".", "_"))
    attach(words, len(words), root, "punct")
    capitalize(words)
    node = "\t".join([empty, form, TRANSITIVE[form], "VERB", "VBD", "Tense=Past",
                      "_", "_", f"{root}:conj", "_"])
    return render(words, sent_id, empty_node=(gap, node))


def conllu_split(rng: random.Random, split: str, size: int) -> str:
    blocks = []
    for number in range(1, size + 1):
        sent_id = f"{split}-{number:03d}"
        if split == "train" and number == MULTIWORD_SENTENCE:
            blocks.append(multiword_sentence(rng, sent_id))
        elif split == "train" and number == EMPTY_NODE_SENTENCE:
            blocks.append(empty_node_sentence(rng, sent_id))
        else:
            words = plain_sentence(rng)
            capitalize(words)
            newdoc = f"tiny-{split}" if number == 1 else None
            blocks.append(render(words, sent_id, newdoc=newdoc))
    return "".join(blocks)


class Node:
    """A generated sentiment tree node with its numeric score (-2..2 after clipping)."""

    def __init__(self, score: int, word: str | None = None, children: tuple = ()) -> None:
        self.score = max(-2, min(2, score))
        self.word = word
        self.children = children

    def __str__(self) -> str:
        label = self.score + 2
        if self.word is not None:
            return f"({label} {self.word})"
        return f"({label} {' '.join(str(child) for child in self.children)})"


def leaf(word: str) -> Node:
    return Node(SENTIMENT.get(word, 0), word=word)


def combine(left: Node, right: Node) -> Node:
    """Composition rule: 'not' negates, 'very' doubles, otherwise scores add up."""
    if left.word == "not":
        score = -right.score
    elif left.word == "very":
        score = 2 * right.score
    else:
        score = left.score + right.score
    return Node(score, children=(left, right))


def adjective_phrase(rng: random.Random) -> Node:
    adjective = leaf(rng.choice(sorted(SENTIMENT)))
    choice = rng.random()
    if choice < 0.2:
        return combine(leaf("not"), adjective)
    if choice < 0.4:
        return combine(leaf("very"), adjective)
    if choice < 0.55:
        other = leaf(rng.choice(sorted(SENTIMENT)))
        return combine(adjective, combine(leaf("and"), other))
    return adjective


def sentiment_tree(rng: random.Random) -> Node:
    noun_phrase_node = combine(leaf(rng.choice(TREE_DETERMINERS)), leaf(rng.choice(TREE_NOUNS)))
    if rng.random() < 0.3:
        modified = combine(adjective_phrase(rng), leaf(rng.choice(TREE_NOUNS)))
        clause = combine(leaf(rng.choice(TREE_DETERMINERS)), modified)
    else:
        predicate = combine(leaf(rng.choice(TREE_VERBS)), adjective_phrase(rng))
        clause = combine(noun_phrase_node, predicate)
    return combine(clause, leaf("."))


def tree_split(rng: random.Random, size: int) -> str:
    return "".join(f"{sentiment_tree(rng)}\n" for _ in range(size))


def write_fixtures(out: Path, seed: int = SEED) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    written = []
    conllu_rng = random.Random(seed)
    tree_rng = random.Random(seed + 1)
    for split, size in SPLIT_SIZES:
        for suffix, text in (("conllu", conllu_split(conllu_rng, split, size)),
                             ("trees", tree_split(tree_rng, size))):
            path = out / f"tiny-{split}.{suffix}"
            path.write_bytes(text.encode("utf-8"))
            written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "data")
    parser.add_argument("--seed", type=int, default=SEED)
    arguments = parser.parse_args()
    for path in write_fixtures(arguments.out, arguments.seed):
        print(f"{path} ({path.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
