"""Recipes: thin models over the library (tagger, Tree-LSTM sentiment, shift-reduce parser).

Each module follows the recipe interface (NAME, MAIN_METRIC, DEFAULT_DATASET, DEFAULTS,
add_arguments, read_examples, Model; optionally `Model.batch_loss(examples, rngs)`, one
generator per example, for models that decide in lockstep over a minibatch, which the loop then
prefers to per-example `loss`; optionally `Model.evaluation_outputs(examples, batch_size)` and
`Model.score(examples, outputs)`, evaluate's two halves, so that data-parallel runs split
evaluation across ranks).
The shared loop in dynlp/train.py trains them and dynlp/cli.py lists them. Recipes never import
each other.
"""
