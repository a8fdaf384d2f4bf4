"""CROWN-IBP training with loss fusion, written the way auto_LiRPA's cifar_training.py writes it.

The bound calls, the loss-fusion wrapper (CrossEntropyWrapper, BoundDataParallel, BoundExp's
max_input), the eps scheduler, the meters and sync_params are auto_LiRPA's interface with the
imports renamed to gmbound.compat. The data is the MNIST subset bundled with gmbound (no download).

Loss fusion bounds the cross-entropy itself: one specification row per sample instead of the
K = 9 margins, so the CROWN-IBP pass is several times cheaper. Compare the step times:

    python examples/train_lirpa_fusion.py                      # loss fusion (the default)
    python examples/train_lirpa_fusion.py --no_loss_fusion     # the K margin rows
    python examples/train_lirpa_fusion.py --steps 3 --log_every 1   # a smoke test
"""
import argparse
import itertools
import time

import torch.nn as nn
import torch.optim as optim
from torch.nn import CrossEntropyLoss
from torch.utils.data import DataLoader, Subset

# from auto_LiRPA import BoundedModule, BoundedTensor, BoundDataParallel, CrossEntropyWrapper
# from auto_LiRPA.bound_ops import BoundExp ... (the same names, renamed:)
from gmbound.compat import BoundedModule, BoundedTensor, BoundDataParallel, CrossEntropyWrapper   # gmbound
from gmbound.compat.bound_ops import BoundExp                                                       # gmbound
from gmbound.compat.eps_scheduler import SmoothedScheduler, FixedScheduler                          # gmbound
from gmbound.compat.perturbations import *  # noqa: F401,F403  PerturbationLpNorm, np, torch       # gmbound
from gmbound.compat.utils import MultiAverageMeter, logger, get_spec_matrix, sync_params            # gmbound
from gmbound.data import load_dataset

MEAN, STD = torch.tensor([0.1307]), torch.tensor([0.3081])


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--no_loss_fusion", action="store_true", help="bound the K margins instead of the loss")
    p.add_argument("--bound_type", choices=["IBP", "CROWN-IBP"], default="CROWN-IBP")
    p.add_argument("--model", choices=["cnn", "cnn_bn"], default="cnn_bn")
    p.add_argument("--eps", type=float, default=0.2)
    p.add_argument("--num_epochs", type=int, default=1)
    p.add_argument("--steps", type=int, default=0, help="batches per epoch at most (0: all)")
    p.add_argument("--batch_size", type=int, default=64)
    p.add_argument("--lr", type=float, default=5e-4)
    p.add_argument("--scheduler_opts", type=str, default="start=0,length=2,mid=0.4")
    p.add_argument("--clip_grad_norm", type=float, default=8.0)
    p.add_argument("--log_every", type=int, default=10)
    p.add_argument("--test_size", type=int, default=256)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=100)
    return p.parse_args()


def make_model(name):
    """A small CNN; "cnn_bn" adds BatchNorm after each hidden layer, as auto_LiRPA's cnn_7layer_bn."""
    bn = name == "cnn_bn"
    return nn.Sequential(
        nn.Conv2d(1, 16, 4, stride=2, padding=1), nn.BatchNorm2d(16) if bn else nn.Identity(), nn.ReLU(),
        nn.Conv2d(16, 32, 4, stride=2, padding=1), nn.BatchNorm2d(32) if bn else nn.Identity(), nn.ReLU(),
        nn.Flatten(), nn.Linear(32 * 7 * 7, 100), nn.ReLU(), nn.Linear(100, 10))


def get_exp_module(bounded_module):
    for _, node in bounded_module.named_modules():
        if isinstance(node, BoundExp):
            return node
    return None


def Train(model, t, loader, eps_scheduler, train, opt, args, loss_fusion=True, final_node_name=None):
    num_class = 10
    meter = MultiAverageMeter()
    n_batches = min(len(loader), args.steps) if args.steps else len(loader)
    if train:
        model.train()
        eps_scheduler.train()
        eps_scheduler.step_epoch()
        eps_scheduler.set_epoch_length(n_batches)
    else:
        model.eval()
        eps_scheduler.eval()

    def get_bound_loss(x=None, c=None):
        bound_lower, bound_upper = (False, True) if loss_fusion else (True, False)
        if args.bound_type == "IBP" or not train:
            lb, ub = model(method_opt="compute_bounds", x=x, IBP=True, C=c, method=None,
                           final_node_name=final_node_name, no_replicas=True)
        else:  # CROWN-IBP mixed with IBP; the second call reuses the IBP call's intermediate bounds
            factor = (eps_scheduler.get_max_eps() - eps_scheduler.get_eps()) / eps_scheduler.get_max_eps()
            ilb, iub = model(method_opt="compute_bounds", x=x, IBP=True, C=c, method=None,
                             final_node_name=final_node_name, no_replicas=True)
            if factor < 1e-50:
                lb, ub = ilb, iub
            else:
                clb, cub = model(method_opt="compute_bounds", IBP=False, C=c, method="backward",
                                 bound_lower=bound_lower, bound_upper=bound_upper,
                                 final_node_name=final_node_name, no_replicas=True)
                if loss_fusion:
                    ub = cub * factor + iub * (1 - factor)
                else:
                    lb = clb * factor + ilb * (1 - factor)
        if loss_fusion:
            max_input = model(get_property=True, node_class=BoundExp, att_name="max_input")
            return None, torch.mean(torch.log(ub) + max_input)
        lb_padded = torch.cat((torch.zeros(size=(lb.size(0), 1), dtype=lb.dtype, device=lb.device), lb), dim=1)
        fake_labels = torch.zeros(size=(lb.size(0),), dtype=torch.int64, device=lb.device)
        return lb, CrossEntropyLoss()(-lb_padded, fake_labels)

    for i, (pixels, labels) in enumerate(itertools.islice(loader, n_batches)):
        start = time.time()
        eps_scheduler.step_batch()
        eps = eps_scheduler.get_eps()
        batch_method = "natural" if eps < 1e-50 else "robust"
        if train:
            opt.zero_grad()
        data = (pixels - MEAN.view(1, -1, 1, 1)) / STD.view(1, -1, 1, 1)
        data_max = torch.reshape((1. - MEAN) / STD, (1, -1, 1, 1))
        data_min = torch.reshape((0. - MEAN) / STD, (1, -1, 1, 1))
        data_ub = torch.min(data + (eps / STD).view(1, -1, 1, 1), data_max)
        data_lb = torch.max(data - (eps / STD).view(1, -1, 1, 1), data_min)
        x = BoundedTensor(data, PerturbationLpNorm(norm=np.inf, eps=eps, x_L=data_lb, x_U=data_ub))
        if loss_fusion:
            if batch_method == "natural" or not train:
                regular_ce = torch.mean(torch.log(model(x, labels)))
            else:
                model(x, labels)
                regular_ce = torch.tensor(0., device=data.device)
            meter.update("CE", regular_ce.item(), x.size(0))
            x, c = (x, labels), None
        else:
            c = get_spec_matrix(data, labels, num_class)
            x = (x,) if final_node_name is None else (x, labels)
            output = model(x, final_node_name=final_node_name)
            regular_ce = CrossEntropyLoss()(output, labels)
            meter.update("CE", regular_ce.item(), x[0].size(0))
            meter.update("Err", torch.sum(torch.argmax(output, dim=1) != labels).item() / x[0].size(0), x[0].size(0))
        if batch_method == "robust":
            lb, loss = get_bound_loss(x=x, c=c)
            robust_ce = loss
        else:
            loss = regular_ce
        if train:
            loss.backward()
            if args.clip_grad_norm:
                meter.update("grad_norm", torch.nn.utils.clip_grad_norm_(model.parameters(), args.clip_grad_norm))
            opt.step()
        meter.update("Loss", loss.item(), data.size(0))
        if batch_method != "natural":
            meter.update("Robust_CE", robust_ce.item(), data.size(0))
            if not loss_fusion:
                # verified only where every margin bound is > 0: a NaN bound (diverged model) never is
                meter.update("Verified_Err", torch.sum(~(lb > 0).all(dim=1)).item() / data.size(0), data.size(0))
        meter.update("Time", time.time() - start)
        if (i + 1) % args.log_every == 0 and train:
            logger.info("[{:2d}:{:4d}]: eps={:.12f} {}".format(t, i + 1, eps, meter))
    logger.info("[{:2d}:{:4d}]: eps={:.12f} {}".format(t, i + 1, eps, meter))
    return meter


def main():
    args = parse_args()
    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    train_data = DataLoader(load_dataset("embedded-mnist", None, train=True), batch_size=args.batch_size,
                            shuffle=True)
    test_set = load_dataset("embedded-mnist", None, train=False)
    test_data = DataLoader(Subset(test_set, range(min(args.test_size, len(test_set)))), batch_size=128)

    model_ori = make_model(args.model)
    dummy_input = torch.randn(2, 1, 28, 28)
    model = BoundedModule(model_ori, dummy_input, bound_opts={"activation_bound_option": None})
    final_name1 = model.final_name
    if args.no_loss_fusion:
        model_loss = BoundedModule(model_ori, dummy_input, bound_opts={"activation_bound_option": None})
        final_name2 = None
    else:
        model_loss = BoundedModule(CrossEntropyWrapper(model_ori), (dummy_input, torch.zeros(1, dtype=torch.long)),
                                   bound_opts={"activation_bound_option": None, "loss_fusion": True})
        # the labels input shifts the node numbers by one: this is the wrapped model's output node
        final_name2 = model_loss._modules[final_name1].output_name[0]
        assert type(model._modules[final_name1]) == type(model_loss._modules[final_name2])
    model_loss = BoundDataParallel(model_loss)
    opt = optim.Adam(model_loss.parameters(), lr=args.lr)
    eps_scheduler = SmoothedScheduler(args.eps, args.scheduler_opts)
    for t in range(1, args.num_epochs + 1):
        m = Train(model_loss, t, train_data, eps_scheduler, True, opt, args, loss_fusion=not args.no_loss_fusion)
        logger.info("mean step time {:.4f}s ({})".format(m.avg("Time"), "K margin rows" if args.no_loss_fusion
                                                         else "loss fusion: one row"))
        sync_params(model_ori, model_loss, loss_fusion=not args.no_loss_fusion)
        with torch.no_grad():
            Train(model_loss, t, test_data, FixedScheduler(args.eps), False, None, args, loss_fusion=False,
                  final_node_name=final_name2)


if __name__ == "__main__":
    main()
