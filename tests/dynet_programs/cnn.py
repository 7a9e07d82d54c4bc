"""A small convolutional classifier over explicit minibatches (DyNet's MNIST style):
conv2d_bias with SAME padding, maxpooling2d, a column-major reshape into the batch's columns,
pickneglogsoftmax_batch and mean_batches."""

import dynet as dy
import numpy as np

from common import set_parameters

rng = np.random.RandomState(0)
images = [rng.uniform(0, 1, (8, 8)) for _ in range(6)]
labels = [int(img[:4].sum() > img[4:].sum()) for img in images]

m = dy.ParameterCollection()
pConv1 = m.add_parameters((2, 3, 1, 4))
pB1 = m.add_parameters((4,))
pConv2 = m.add_parameters((2, 2, 4, 3))
pB2 = m.add_parameters((3,))
pW = m.add_parameters((2, 2 * 2 * 3))
set_parameters(m, seed=4)
trainer = dy.SimpleSGDTrainer(m, learning_rate=0.5)


def network(batch):
    x = dy.inputTensor(batch, batched=True)
    size = x.dim()[-1]
    x = dy.conv2d_bias(x, pConv1, pB1, [1, 1], is_valid=False)
    x = dy.rectify(dy.maxpooling2d(x, [2, 2], [2, 2]))
    x = dy.conv2d_bias(x, pConv2, pB2, [1, 1], is_valid=True)  # (4, 4, 4) -> (3, 3, 3)
    x = dy.maxpooling2d(x, [2, 2], [1, 1], is_valid=True)
    x = dy.reshape(x, (2 * 2 * 3, 1), batch_size=size)
    return pW * x


for epoch in range(4):
    dy.renew_cg()
    loss = dy.mean_batches(dy.pickneglogsoftmax_batch(network(images), labels))
    print("epoch %d loss %.5f" % (epoch, loss.value()))
    loss.backward()
    trainer.update()
dy.renew_cg()
print("scores %s" % " ".join("%.4f" % v for v in network(images[:2]).npvalue().ravel()))
