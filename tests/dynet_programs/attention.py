"""An encoder-decoder with attention (DyNet's attention style): concatenate_cols, transpose,
softmax over columns, a decoder LSTM fed with the context."""

import dynet as dy

from common import set_parameters

VOCAB, EMB, HID, ATT = 6, 4, 6, 5
model = dy.Model()
enc = dy.LSTMBuilder(1, EMB, HID, model)
dec = dy.LSTMBuilder(1, HID + EMB, HID, model)
E = model.add_lookup_parameters((VOCAB, EMB))
W1 = model.add_parameters((ATT, HID))
W2 = model.add_parameters((ATT, HID))
v = model.add_parameters((1, ATT))
Wout = model.add_parameters((VOCAB, HID))
bout = model.add_parameters(VOCAB)
set_parameters(model)
trainer = dy.AdagradTrainer(model, learning_rate=0.1)


def attend(encoded, state):
    w1, w2, vv = dy.parameter(W1), dy.parameter(W2), dy.parameter(v)
    unnormalized = dy.transpose(vv * dy.tanh(dy.colwise_add(w1 * encoded, w2 * state.output())))
    weights = dy.softmax(unnormalized)
    return encoded * weights


def loss_of(src, tgt):
    dy.renew_cg()
    encoded = dy.concatenate_cols(enc.initial_state().transduce([E[w] for w in src]))
    state = dec.initial_state().add_input(dy.concatenate([dy.vecInput(HID), E[0]]))
    losses = []
    for prev, nxt in zip([0] + tgt, tgt + [0]):
        context = attend(encoded, state)
        state = state.add_input(dy.concatenate([context, E[prev]]))
        scores = dy.affine_transform([dy.parameter(bout), dy.parameter(Wout), state.output()])
        losses.append(dy.pickneglogsoftmax(scores, nxt))
    return dy.esum(losses)


pairs = [([1, 2, 3], [3, 2, 1]), ([4, 5], [5, 4]), ([2, 4, 1], [1, 4, 2])]
for epoch in range(3):
    total = 0.0
    for src, tgt in pairs:
        loss = loss_of(src, tgt)
        total += loss.value()
        loss.backward()
        trainer.update()
    print("epoch %d loss %.5f" % (epoch, total))
