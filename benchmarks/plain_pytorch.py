"""The VAE lesson's model in plain PyTorch, written the way a learner would write it.

The same network as VariationalAutoEncoder_tf2.py with its defaults (the MLP, a 2-D latent
space): 784 -> 512 (ReLU) -> z_mean, z_log_var (2 each); z = z_mean + sigma * eps; 2 -> 512
(ReLU) -> 784 logits. The loss is the negative ELBO per image: the Bernoulli negative
log-likelihood summed over the pixels (`binary_cross_entropy_with_logits`), averaged over the
batch, plus the KL to N(0, I) in closed form. Adam at 1e-3, batches of 128 from a shuffled
`DataLoader`; after every epoch of training, the test split is scored (no gradients), as Keras's
`fit` does with `validation_data`, and the epoch's wall-clock time covers both.

The data are the bench's plain-Keras VAE's: the suite's loader (`common/data.py`, read on its own,
so this process never starts TensorFlow or Keras) and the images binarized once, train with seed
0 and test with seed 1. PyTorch keeps its default threading. It prints each epoch on stderr and,
last on stdout, one line of JSON: {"epoch_seconds": [[...]], "train_examples": N}, the format
benchmarks/bench.py reads.

    python benchmarks/plain_pytorch.py --dataset fashion_mnist --epochs 3
    python benchmarks/plain_pytorch.py --data small.npz --epochs 2
"""

import argparse
import importlib
import json
import pathlib
import sys
import time
import types

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = pathlib.Path(__file__).resolve().parent.parent
PIXELS = 28 * 28
HIDDEN_UNITS = 512
LATENT_DIM = 2


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", choices=("mnist", "fashion_mnist"), default="mnist")
    parser.add_argument("--data", help="a Keras-format .npz instead of the named dataset")
    parser.add_argument("--limit", type=int, help="the first N training images only")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--seed", type=int, default=0)
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    x_train, x_test = load_binarized(args)
    torch.manual_seed(args.seed)
    train_loader = DataLoader(TensorDataset(x_train), batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(TensorDataset(x_test), batch_size=args.batch_size)
    model = VAE()
    optimizer = torch.optim.Adam(model.parameters(), lr=args.learning_rate)

    epoch_seconds = []
    for epoch in range(args.epochs):
        started = time.perf_counter()
        train_loss = train_one_epoch(model, train_loader, optimizer)
        test_loss = evaluate(model, test_loader)
        epoch_seconds.append(time.perf_counter() - started)
        print(f"epoch {epoch + 1}/{args.epochs}: loss {train_loss:.2f}, val_loss "
              f"{test_loss:.2f} nats per image, {epoch_seconds[-1]:.2f} s", file=sys.stderr)
    print(json.dumps({"epoch_seconds": [epoch_seconds], "train_examples": len(x_train)}))


def load_binarized(args):
    """Train and test images as float32 tensors of shape (N, 28, 28, 1), binarized once."""
    data = suite_data()
    dataset = data.load_dataset(args.dataset, args.data, args.limit)
    return (torch.from_numpy(data.binarize(dataset.x_train, 0)),
            torch.from_numpy(data.binarize(dataset.x_test, 1)))


def suite_data():
    """common/data.py alone: `common/__init__.py` would import TensorFlow and Keras, which a
    plain PyTorch program does not load (they would only add to its memory)."""
    if "common" not in sys.modules:
        package = types.ModuleType("common")
        package.__path__ = [str(ROOT / "common")]
        sys.modules["common"] = package
    return importlib.import_module("common.data")


# -- The model -----------------------------------------------------------------------------------

class VAE(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(PIXELS, HIDDEN_UNITS), nn.ReLU())
        self.z_mean = nn.Linear(HIDDEN_UNITS, LATENT_DIM)
        self.z_log_var = nn.Linear(HIDDEN_UNITS, LATENT_DIM)
        self.decoder = nn.Sequential(nn.Linear(LATENT_DIM, HIDDEN_UNITS), nn.ReLU(),
                                     nn.Linear(HIDDEN_UNITS, PIXELS))

    def forward(self, x):
        hidden = self.encoder(x)
        z_mean, z_log_var = self.z_mean(hidden), self.z_log_var(hidden)
        # The reparameterisation trick: the noise is an input, so gradients reach mean and variance.
        z = z_mean + torch.exp(0.5 * z_log_var) * torch.randn_like(z_mean)
        return self.decoder(z), z_mean, z_log_var


def vae_loss(logits, x, z_mean, z_log_var):
    """The negative ELBO, in nats per image: reconstruction + KL, each averaged over the batch."""
    targets = x.flatten(start_dim=1)
    reconstruction = F.binary_cross_entropy_with_logits(logits, targets,
                                                        reduction="sum") / len(x)
    kl = -0.5 * torch.sum(1 + z_log_var - z_mean.pow(2) - z_log_var.exp(), dim=1).mean()
    return reconstruction + kl


# -- Training and evaluation ---------------------------------------------------------------------

def train_one_epoch(model, loader, optimizer):
    """One pass over the training images; returns the mean loss per image."""
    model.train()
    total, count = 0.0, 0
    for (x,) in loader:
        logits, z_mean, z_log_var = model(x)
        loss = vae_loss(logits, x, z_mean, z_log_var)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total, count = total + loss.item() * len(x), count + len(x)
    return total / count


@torch.no_grad()
def evaluate(model, loader):
    """The mean loss per image over the test images, without gradients."""
    model.eval()
    total, count = 0.0, 0
    for (x,) in loader:
        logits, z_mean, z_log_var = model(x)
        total += vae_loss(logits, x, z_mean, z_log_var).item() * len(x)
        count += len(x)
    return total / count


if __name__ == "__main__":
    main()
