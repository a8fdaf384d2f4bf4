"""How tight is loss fusion on a trained net? The two upper bounds of ``max CE(f(x'), y)`` over each box, side by side.

For a checkpoint and test images: per radius, the mean over the images of

* ``CE(-m)``: the paper's robust term, the cross-entropy of the CROWN-IBP margin lower bounds (K = n - 1 rows);
* ``fused``: ``BoundedSequential.fused_cross_entropy`` (the chord of exp on the IBP intervals, one CROWN-IBP row);
* ``IBP``: ``CE(-m_IBP)`` (equal to the fused bound at beta = 0),

and the fraction of images where the fused bound is the tighter one. Model in eval mode, float32.

    python benchmarks/fusion_gap.py --checkpoint results/mnist_table3/eps0.5_gm-crown-ibp_s0/model.pt --n 1000
"""
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

import gmbound
from gmbound.checkpoint import load_model
from gmbound.data import load_dataset
from gmbound.specification import robust_logits


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, nargs="+")
    p.add_argument("--data-dir", default="../shared/data")
    p.add_argument("--n", type=int, default=1000, help="first n test images")
    p.add_argument("--radii", default="0.05,0.1,0.2,0.3,0.4,0.5")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    test = load_dataset("mnist", args.data_dir, train=False)
    xs, ys = zip(*(test[i] for i in range(args.n)))
    x, y = torch.stack(xs), torch.as_tensor(ys)
    radii = torch.tensor([float(r) for r in args.radii.split(",")])
    print("| model | radius | CE(-m), CROWN-IBP | fused, CROWN-IBP | CE(-m_IBP) | fused tighter on |")
    print("|---|---|---|---|---|---|")
    for path in args.checkpoint:
        model, _ = load_model(path)
        model.eval()
        net = gmbound.BoundedSequential(model)
        with torch.no_grad():
            rows = []
            for i in range(0, args.n, 250):
                xb, yb = x[i:i + 250], y[i:i + 250]
                n = 10
                kw = dict(x_min=0.0, x_max=1.0)
                m_c = net.margin_bounds(xb, yb, radii, method="crown-ibp", beta=1.0, **kw)
                m_i = net.margin_bounds(xb, yb, radii, method="ibp", **kw)
                ce = lambda m: F.cross_entropy(robust_logits(m, yb, n).flatten(0, 1), yb.repeat(len(radii)),
                                               reduction="none").view(len(radii), -1)
                fused = net.fused_cross_entropy(xb, yb, radii, method="crown-ibp", beta=1.0, **kw).bound
                rows.append(torch.stack([ce(m_c), fused, ce(m_i)]))
            allr = torch.cat(rows, 2)  # [3, R, n]
        for j, r in enumerate(radii.tolist()):
            c, f, i = allr[0, j], allr[1, j], allr[2, j]
            print(f"| {path} | {r:g} | {c.mean():.4f} | {f.mean():.4f} | {i.mean():.4f} | "
                  f"{100 * (f < c).float().mean():.1f} % |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
