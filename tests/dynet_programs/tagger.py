"""A BiLSTM tagger (DyNet's tagger style): two LSTMBuilders, an MLP, Adam."""

import dynet as dy

from common import TAGS, WORDS, sentences, set_parameters

tagset = sorted(set(TAGS.values()))
model = dy.ParameterCollection()
E = model.add_lookup_parameters((len(WORDS), 8))
fwd = dy.LSTMBuilder(1, 8, 6, model)
bwd = dy.LSTMBuilder(1, 8, 6, model)
H = model.add_parameters((10, 12))
Wo = model.add_parameters((len(tagset), 10))
set_parameters(model)
trainer = dy.AdamTrainer(model, alpha=0.01)


def build(words):
    dy.renew_cg()
    wembs = [E[WORDS.index(w)] for w in words]
    fw = fwd.initial_state().transduce(wembs)
    bw = bwd.initial_state().transduce(reversed(wembs))
    h, o = dy.parameter(H), dy.parameter(Wo)
    return [o * dy.tanh(h * dy.concatenate([f, b])) for f, b in zip(fw, reversed(bw))]


def tag(words):
    return [tagset[int(s.npvalue().argmax())] for s in build(words)]


data = sentences(8)
for epoch in range(4):
    total = 0.0
    for words in data:
        scores = build(words)
        loss = dy.esum([dy.pickneglogsoftmax(s, tagset.index(TAGS[w]))
                        for s, w in zip(scores, words)])
        total += loss.scalar_value()
        loss.backward()
        trainer.update()
    print("epoch %d loss %.5f" % (epoch, total))
good = sum(t == TAGS[w] for words in data for t, w in zip(tag(words), words))
print("accuracy %d/%d" % (good, sum(len(s) for s in data)))
