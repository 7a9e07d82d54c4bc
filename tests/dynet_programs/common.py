"""Shared by the DyNet programs here: deterministic parameter values, so that DyNet and dynlp
start from the same numbers, and a tiny corpus."""

import numpy as np

WORDS = "the a dog cat sees chases big small".split()
TAGS = {"the": "D", "a": "D", "dog": "N", "cat": "N", "sees": "V", "chases": "V",
        "big": "A", "small": "A"}


def set_parameters(model, seed=1, scale=0.3):
    rng = np.random.RandomState(seed)
    for p in model.parameters_list():
        p.set_value(rng.uniform(-scale, scale, p.shape()))
    for p in model.lookup_parameters_list():
        p.init_from_array(rng.uniform(-scale, scale, p.shape()))


def sentences(count, seed=0):
    rng = np.random.RandomState(seed)
    out = []
    for _ in range(count):
        n = rng.randint(2, 5)
        out.append(["the"] + [WORDS[k] for k in rng.randint(2, len(WORDS), size=n)])
    return out
