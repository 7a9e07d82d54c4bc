"""Explicit minibatches (DyNet's minibatch style): lookup_batch, an LSTM over batched inputs,
pickneglogsoftmax_batch, sum_batches."""

import dynet as dy

from common import WORDS, set_parameters

model = dy.ParameterCollection()
E = model.add_lookup_parameters((len(WORDS), 5))
rnn = dy.VanillaLSTMBuilder(1, 5, 7, model)
W = model.add_parameters((len(WORDS), 7))
b = model.add_parameters(len(WORDS))
set_parameters(model)
trainer = dy.MomentumSGDTrainer(model, learning_rate=0.1)

# three sequences of four words, read as one batch of three at each step
batch = [[0, 2, 4, 3], [1, 3, 5, 2], [0, 6, 4, 7]]
for epoch in range(5):
    dy.renew_cg()
    state = rnn.initial_state()
    losses = []
    for t in range(3):
        state = state.add_input(dy.lookup_batch(E, [s[t] for s in batch]))
        scores = dy.affine_transform([b, W, state.output()])
        losses.append(dy.pickneglogsoftmax_batch(scores, [s[t + 1] for s in batch]))
    loss = dy.sum_batches(dy.esum(losses)) / len(batch)
    print("epoch %d loss %.5f dim %s" % (epoch, loss.value(), losses[0].dim()))
    loss.backward()
    trainer.update()
