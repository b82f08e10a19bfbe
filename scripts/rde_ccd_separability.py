"""How well do RDE's per-sample losses separate noisy from clean pairs, before any training?

Builds the model and data of an RDE config (the encoder's ``pretrained`` weights, a fresh TSE
head), computes every training pair's BGE and TSE loss in eval mode (groups of the training batch
size, captions not augmented) and prints, against the ground-truth clean flags: the ROC AUC of
each loss (and of the pair's BGE cosine) for "noisy", the clean / noisy cosine statistics, and the
precision / recall of the BGE-only division with each GMM preset. This is what CCD sees at the
start of epoch 1.

Example:
    .venv/bin/python scripts/rde_ccd_separability.py --rate 0.5
"""

from __future__ import annotations

import argparse
import sys

import numpy as np
import torch


def main() -> None:
    """Prints the separability report."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", default="experiments/rde/synth_pedes.yaml")
    p.add_argument("--rate", type=float, default=0.5, help="caption noise rate")
    p.add_argument("--seed", type=int, default=0, help="shuffling seed of the loss groups")
    args = p.parse_args()
    from sklearn.metrics import roc_auc_score

    from mmembed.cli import main as cli_main
    from mmembed.methods.rde import ccd

    sys.argv = sys.argv[:1]
    cli = cli_main(["-c", args.config, f"--data.init_args.caption_noise.init_args.rate={args.rate}"], run=False)
    model, dm = cli.model.eval(), cli.datamodule
    model.hparams.text_aug_p = 0.0
    dm.prepare_data()
    dm.setup("fit")
    train = dm.train_dataloader()
    clean = np.asarray(train.dataset.clean)
    if clean.all():
        raise SystemExit("every pair is clean: use --rate > 0")
    loader = torch.utils.data.DataLoader(train.dataset, batch_size=4 * train.batch_size, shuffle=True,
                                         num_workers=train.num_workers, collate_fn=train.collate_fn,
                                         generator=torch.Generator().manual_seed(args.seed))
    idx, lb, lt, cos = [], [], [], []
    with torch.inference_mode():
        for batch in loader:
            loss_b, loss_t, _ = model._losses(batch, group=train.batch_size)
            img, txt, _, _ = model._dual_embeddings(batch["image"], batch["text"])
            idx.append(batch["index"])
            lb.append(loss_b)
            lt.append(loss_t)
            cos.append((img * txt).sum(-1))
    order = torch.cat(idx).argsort().numpy()
    loss_b, loss_t, cos = (torch.cat(x).numpy()[order] for x in (lb, lt, cos))
    noisy = ~clean
    print(f"{args.config}, noise {args.rate}: {clean.size} pairs, {noisy.sum()} noisy")
    print(f"ROC AUC for 'noisy': BGE loss {roc_auc_score(noisy, loss_b):.3f}, TSE loss "
          f"{roc_auc_score(noisy, loss_t):.3f}, BGE 1 - cosine {roc_auc_score(noisy, -cos):.3f}")
    print(f"BGE cosine: clean {cos[clean].mean():.3f} ± {cos[clean].std():.3f}, "
          f"noisy {cos[noisy].mean():.3f} ± {cos[noisy].std():.3f}")
    for name, settings in (("light", ccd.GMM_LIGHT), ("strict", ccd.GMM_STRICT)):
        pred = ccd.divide(ccd.clean_posterior(ccd.minmax(loss_b), settings))
        pr = ccd.label_precision_recall(pred, clean)
        print(f"BGE-only division, GMM {name}: precision {pr['precision']:.3f}, recall {pr['recall']:.3f}, "
              f"kept {pr['clean_fraction']:.3f}")


if __name__ == "__main__":
    main()
