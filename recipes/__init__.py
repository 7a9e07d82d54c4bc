"""Recipes: thin models over the library (tagger, Tree-LSTM sentiment, shift-reduce parser).

Each module follows the recipe interface (NAME, MAIN_METRIC, DEFAULT_DATASET, DEFAULTS,
add_arguments, read_examples(path, purpose, config) with purpose "train", "evaluate" or
"predict", Model; optionally LIMITS (setting -> dynlp.train.Limit, the allowed values checked on
the command line and in model files), MODEL_REFERENCES (setting -> recipe of the model it names),
`Model.batch_loss(examples, rngs)`, one generator per example, for models that decide in
lockstep over a minibatch, which the loop then prefers to per-example `loss`, and
`Model.evaluation_outputs(examples, batch_size)` with `Model.score(examples, outputs)`,
evaluate's two halves, so that data-parallel runs split evaluation across ranks).
The shared loop in dynlp/train.py trains them and dynlp/cli.py lists them. Recipes never import
each other.
"""
