"""CROWN-IBP certified training of a small network on MNIST, written the way an auto_LiRPA user writes it.

Everything below is auto_LiRPA's interface (BoundedModule, BoundedTensor, PerturbationLpNorm,
compute_bounds) and plain PyTorch. Against auto_LiRPA the only changes are the two import lines
marked "gmbound", plus the data: the MNIST subset bundled with gmbound, so that it runs offline.
Compare with train_lirpa_style_gm.py, which adds the few lines of GM-CROWN-IBP training.

    python examples/train_lirpa_style.py                       # about half a minute on two CPU cores
    python examples/train_lirpa_style.py --epochs 1 --steps 5  # a smoke test
"""
import argparse
import time

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.data import DataLoader, Subset

# from auto_LiRPA import BoundedModule, BoundedTensor
# from auto_LiRPA.perturbations import PerturbationLpNorm
from gmbound.compat import BoundedModule, BoundedTensor                 # gmbound
from gmbound.compat.perturbations import PerturbationLpNorm             # gmbound
from gmbound.data import load_dataset

MEAN, STD = 0.1307, 0.3081                     # MNIST; the model sees normalised pixels
DATA_MIN, DATA_MAX = (0.0 - MEAN) / STD, (1.0 - MEAN) / STD


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=("mlp", "cnn"), default="mlp")
    p.add_argument("--eps", type=float, default=0.1, help="training radius, in pixels ([0, 1])")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--steps", type=int, default=0, help="batches per epoch at most (0: the whole training set)")
    p.add_argument("--warmup", type=int, default=20, help="steps of natural training before the eps ramp")
    p.add_argument("--ramp", type=int, default=80, help="steps over which eps grows to --eps")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--test-size", type=int, default=500)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (0: torch's default, all cores; one is faster where the cores are shared)")
    return p.parse_args()


def make_model(name):
    if name == "mlp":
        return nn.Sequential(
            nn.Flatten(),
            nn.Linear(28 * 28, 256), nn.ReLU(),
            nn.Linear(256, 256), nn.ReLU(),
            nn.Linear(256, 10))
    return nn.Sequential(                          # "cnn": slower to bound on a CPU
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 100), nn.ReLU(),
        nn.Linear(100, 10))


def margin_specification(labels, n_classes=10):
    """C with rows e_y - e_j for the K = n_classes - 1 classes j != y: C f(x) are the margins."""
    eye = torch.eye(n_classes)
    rows = eye[labels].unsqueeze(1) - eye.unsqueeze(0)                  # [B, n, n]; row y is zero
    keep = torch.arange(n_classes).unsqueeze(0) != labels.unsqueeze(1)  # [B, n]
    return rows[keep].view(len(labels), n_classes - 1, n_classes)


def robust_cross_entropy(lb):
    """CE of the logits (0, -lb): the margin lower bounds with 0 for the true class, which goes first."""
    logits = torch.cat([torch.zeros_like(lb[:, :1]), -lb], dim=1)
    return F.cross_entropy(logits, torch.zeros(len(lb), dtype=torch.long))


def bounded_input(pixels, eps):
    """The normalised batch as a BoundedTensor with the eps box clipped to the pixel range."""
    data = (pixels - MEAN) / STD
    eps_n = eps / STD
    data_lb = torch.clamp(data - eps_n, min=DATA_MIN)
    data_ub = torch.clamp(data + eps_n, max=DATA_MAX)
    ptb = PerturbationLpNorm(norm=np.inf, eps=eps_n, x_L=data_lb, x_U=data_ub)
    return BoundedTensor(data, ptb)


def schedule(step, args):
    """eps ramps linearly after the warm-up; the CROWN-IBP weight beta and kappa follow it."""
    progress = min(max((step - args.warmup) / max(args.ramp, 1), 0.0), 1.0)
    return args.eps * progress, 1.0 - progress, 1.0 - 0.5 * progress   # eps, beta, kappa


def train(model, loader, opt, args):
    step, t0 = 0, time.time()
    for epoch in range(1, args.epochs + 1):
        model.train()
        for i, (pixels, labels) in enumerate(loader):
            if args.steps and i >= args.steps:
                break
            eps, beta, kappa = schedule(step, args)
            x = bounded_input(pixels, eps)
            output = model(x)
            regular_ce = F.cross_entropy(output, labels)
            c = margin_specification(labels)
            # CROWN-IBP bounds mixed with IBP (Zhang et al., ICLR 2020), in auto_LiRPA's examples' two calls:
            # IBP on the input model(x) set, then "backward", which reuses the IBP call's intermediate bounds
            ilb, iub = model.compute_bounds(IBP=True, C=c, method=None)
            if beta > 1e-5:
                clb, _ = model.compute_bounds(IBP=False, C=c, method="backward", bound_upper=False)
                lb = beta * clb + (1 - beta) * ilb
            else:
                lb = ilb
            robust_ce = robust_cross_entropy(lb)
            loss = kappa * regular_ce + (1 - kappa) * robust_ce
            opt.zero_grad()
            loss.backward()
            opt.step()
            if step % args.log_every == 0:
                err = (output.argmax(1) != labels).float().mean().item()
                verr = (~(lb > 0).all(1)).float().mean().item()
                print(f"epoch {epoch} step {step:4d}  eps {eps:.3f}  beta {beta:.2f}  kappa {kappa:.2f}  "
                      f"loss {loss.item():.4f}  robust_ce {robust_ce.item():.4f}  err {err:.3f}  "
                      f"verified_err {verr:.3f}  ({time.time() - t0:.1f}s)", flush=True)
            step += 1


@torch.no_grad()
def evaluate(model, loader, eps):
    model.eval()
    n = wrong = ibp_wrong = crown_ibp_wrong = 0
    for pixels, labels in loader:
        x = bounded_input(pixels, eps)
        output = model(x)
        c = margin_specification(labels)
        ilb, _ = model.compute_bounds(x=(x,), C=c, method="IBP")
        clb, _ = model.compute_bounds(C=c, method="CROWN-IBP", bound_upper=False)
        n += len(labels)
        wrong += (output.argmax(1) != labels).sum().item()
        # verified only where every margin bound is > 0: a NaN bound (diverged model) never is
        ibp_wrong += (~(ilb > 0).all(1)).sum().item()
        crown_ibp_wrong += (~(torch.maximum(ilb, clb) > 0).all(1)).sum().item()
    print(f"test ({n} images) at eps {eps}: clean error {wrong / n:.3f}  verified error: "
          f"IBP {ibp_wrong / n:.3f}  IBP or CROWN-IBP {crown_ibp_wrong / n:.3f}")


def main():
    args = parse_args()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_set = load_dataset("embedded-mnist", None, train=True)
    test_set = load_dataset("embedded-mnist", None, train=False)
    train_loader = DataLoader(train_set, batch_size=args.batch_size, shuffle=True)
    test_loader = DataLoader(Subset(test_set, range(min(args.test_size, len(test_set)))), batch_size=250)

    model_ori = make_model(args.model)
    dummy_input = torch.zeros(1, 1, 28, 28)
    model = BoundedModule(model_ori, dummy_input, bound_opts={"relu": "adaptive", "conv_mode": "patches"})
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    train(model, train_loader, opt, args)
    evaluate(model, test_loader, args.eps)


if __name__ == "__main__":
    main()
