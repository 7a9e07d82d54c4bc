"""Recipes: thin models over the library (tagger, Tree-LSTM sentiment, shift-reduce parser).

Each module follows the recipe interface (NAME, MAIN_METRIC, DEFAULT_DATASET, DEFAULTS,
add_arguments, read_examples, Model; optionally `Model.batch_loss(examples, rng)` for models
that decide in lockstep over a minibatch, which the loop then prefers to per-example `loss`).
The shared loop in dynlp/train.py trains them and dynlp/cli.py lists them. Recipes never import
each other.
"""
