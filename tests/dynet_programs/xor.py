"""XOR with one graph built once and inputs set again at every step (DyNet's xor style)."""

import sys

import dynet as dy

from common import set_parameters

ITERATIONS = int(sys.argv[1]) if len(sys.argv) > 1 else 30

m = dy.ParameterCollection()
pW = m.add_parameters((8, 2))
pV = m.add_parameters((1, 8))
pb = m.add_parameters((8,))
set_parameters(m, scale=0.5)
trainer = dy.SimpleSGDTrainer(m)

dy.renew_cg()
W = dy.parameter(pW)
V = dy.parameter(pV)
b = dy.parameter(pb)
x = dy.vecInput(2)
y = dy.scalarInput(0)
output = dy.logistic(V * (dy.tanh((W * x) + b)))
loss = dy.binary_log_loss(output, y)

for it in range(ITERATIONS):
    mloss = 0.0
    for mi in range(4):
        x1 = mi % 2
        x2 = (mi // 2) % 2
        x.set([1 if x1 else -1, 1 if x2 else -1])
        y.set(1 if x1 != x2 else 0)
        mloss += loss.scalar_value()
        loss.backward()
        trainer.update()
    print("loss %.6f" % (mloss / 4.0))

x.set([1, -1])
print("prediction %.6f" % output.scalar_value())
