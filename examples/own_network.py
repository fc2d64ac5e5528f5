"""autocomp on your own network object and your own torch Datasets (paste it into a notebook).

A small residual CNN is trained briefly on 6,000 MNIST digits held as tensors; autocomp.search
derives its search space from the object itself (which blocks may be skipped, the channels each
block may prune, low-rank and precision choices), ships the object to the Ray workers and searches
it on this CPU under a 1 ms budget. The object is never changed: candidates are compressed copies.
"""

import torch
from torch import nn

import autocomp
from autocomp.data import load_dataset

# your data: torch Datasets of (tensor C x H x W, label), here MNIST digits as tensors
mnist = load_dataset("mnist")
x, y = mnist.normalise(mnist.train.x[:6000]), torch.as_tensor(mnist.train.y[:6000]).long()
train, test = torch.utils.data.TensorDataset(x[:5000], y[:5000]), torch.utils.data.TensorDataset(x[5000:], y[5000:])


class Block(nn.Module):  # a residual block: the search may skip it, prune it, factorise it, quantize it
    def __init__(self, c):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c), nn.ReLU(),
                                  nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.body(x))


# your network: its blocks are the children of an nn.Sequential (as in torchvision's ResNets)
model = nn.Sequential(nn.Conv2d(1, 32, 3, 2, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU(),   # stem
                      nn.Sequential(Block(32), Block(32), Block(32)),                         # blocks
                      nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10))               # head
opt = torch.optim.Adam(model.parameters(), 3e-3)
for step in range(300):  # trained as you train it
    i = torch.randint(0, 5000, (64,))
    loss = nn.functional.cross_entropy(model(x[i]), y[i])
    opt.zero_grad()
    loss.backward()
    opt.step()

run = autocomp.search(model, (train, test), budget="1ms", trials=8)   # the input size (1x28x28) comes from the data
print(run.results[["id", "accuracy", "latency_ms", "summary"]])       # every candidate evaluated
print(run.best)                                                       # the most accurate one under 1 ms
if run.best:
    print(run.export(run.best["id"]))   # its ONNX (QDQ for int8 layers), verified and measured on the device
# a run of an object resumes from Python (the same object): autocomp.search(model, (train, test), budget="1ms",
# trials=8, out=run.dir, resume=True)
