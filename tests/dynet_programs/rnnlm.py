"""A character-level LSTM language model (DyNet's rnnlm style), one graph per sentence."""

import dynet as dy

from common import sentences, set_parameters

chars = sorted(set("".join(w for s in sentences(20) for w in s) + " "))
EOS = len(chars)
ids = {c: k for k, c in enumerate(chars)}

model = dy.Model()
lookup = model.add_lookup_parameters((len(chars) + 1, 6))
rnn = dy.LSTMBuilder(2, 6, 10, model)
R = model.add_parameters((len(chars) + 1, 10))
bias = model.add_parameters((len(chars) + 1,))
set_parameters(model)
trainer = dy.SimpleSGDTrainer(model, learning_rate=0.2)


def sentence_loss(sent):
    dy.renew_cg()
    state = rnn.initial_state()
    r, b = dy.parameter(R), dy.parameter(bias)
    losses = []
    seq = [EOS] + [ids[c] for c in " ".join(sent)] + [EOS]
    for cur, nxt in zip(seq, seq[1:]):
        state = state.add_input(lookup[cur])
        losses.append(dy.pickneglogsoftmax(r * state.output() + b, nxt))
    return dy.esum(losses)


for epoch in range(3):
    total = 0.0
    for sent in sentences(6):
        loss = sentence_loss(sent)
        total += loss.value()
        loss.backward()
        trainer.update()
    print("epoch %d loss %.5f" % (epoch, total))
