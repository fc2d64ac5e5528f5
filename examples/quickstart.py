"""autocomp from Python: search, look at the front, export the winner, compress and measure.

Run it as a script (``python examples/quickstart.py``) or paste it into a notebook. It searches the
shipped MNIST space on this CPU (ONNX Runtime, 1 thread) under a 2 ms budget with 8 candidates (a
few minutes on an idle laptop; the first run fetches MNIST once and calibrates the latency model of
this machine), then repeats the search on *your own* torch Dataset, and compresses and measures a
model on its own.
"""

import torch

import autocomp

# 1. A search on the embedded default (the mnist-mbv2 space, real MNIST).
run = autocomp.search("mnist-mbv2", "mnist", budget="2ms", device="cpu-ort", trials=8,
                      callbacks=[lambda event, row: event == "row" and print("evaluated", row["id"], row["status"])])
print(run.dir, run.best)              # the most accurate candidate under 2 ms (None if none fits)
print(run.results[["id", "accuracy", "latency_ms", "summary"]])   # a pandas DataFrame
for r in run.front:                   # the accuracy / latency Pareto front
    print(f"{r['id']}  acc {r['accuracy']:.4f}  {r['latency_ms']:.3f} ms  {r['summary']}")
print("report:", run.report())        # report.html in the run directory
if run.best:
    m = run.export(run.best["id"])    # ONNX (QDQ for int8 layers) + policy.json, measured on the device
    print("exported:", m["accuracy_test"], m["measured_latency_ms"], "ms")


# 2. The same search on your own data: any map-style torch Dataset of (tensor C x H x W, label),
#    normalised by the Dataset itself. Here: 6,000 MNIST digits held as tensors.
class MyDigits(torch.utils.data.Dataset):
    def __init__(self, images, labels):
        self.images, self.targets = images, labels   # .targets: labels are read without a pass over the data

    def __len__(self):
        return len(self.targets)

    def __getitem__(self, i):
        return self.images[i], self.targets[i]


from autocomp.data import load_dataset  # noqa: E402

mnist = load_dataset("mnist")
x = (torch.as_tensor(mnist.train.x[:6000]).float() / 255 - 0.1307) / 0.3081
mine = MyDigits(x, mnist.train.y[:6000].tolist())        # split per class 80/10/10 by autocomp
# weights="auto" (default): candidates inherit the space's supernet (trained on MNIST), which suits these
# digits; for data unlike MNIST, weights="scratch", train_steps=N trains every candidate (much slower on a CPU).
run2 = autocomp.search("mnist-mbv2", mine, budget="2ms", trials=4)
print("own data:", run2.best)

# 3. The library's pieces on their own: compress any candidate of the space, measure any model.
import random  # noqa: E402

from autocomp.models.mbv2 import build  # noqa: E402
from autocomp.space import get_space  # noqa: E402

space = get_space("mnist-mbv2")
policy = space.sample(random.Random(0))   # or a policy.json from a run's models/<id>/
small = autocomp.compress(build(policy, space), policy, data="mnist")
print(autocomp.measure(small, "cpu-ort", precision=policy.precision, input_shape=(1, 28, 28)))
