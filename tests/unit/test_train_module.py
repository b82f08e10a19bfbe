"""TrainModule: parameter groups, scheduler budgets, temperature clamp, EMA and manual optimisation."""

from __future__ import annotations

import math
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from mmembed.lit.module import TrainModule
from mmembed.lit.schedulers import WarmupCosineLR, warmup_cosine_factor
from mmembed.nn.heads import LogitScale


class Regression(TrainModule):
    """A linear model fit by MSE: small enough to follow every optimizer step by hand."""

    def __init__(self, manual: bool = False, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        torch.manual_seed(0)
        self.net = nn.Linear(3, 1)
        self.scale = LogitScale(0.07, max_scale=20.0)
        self.automatic_optimization = not manual
        self.seen: list[dict[str, Tensor]] = []  # weights at every validation

    def compute_loss(self, batch: Any) -> dict[str, Tensor]:
        x, y = batch
        return {"loss": ((self.net(x).squeeze(1) - y) ** 2).mean() + 0.0 * self.scale()}

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        if self.automatic_optimization:
            return super().training_step(batch, batch_idx)
        out = self.compute_loss(batch)
        self.manual_step(out["loss"])
        return out["loss"]

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.seen.append({k: v.detach().clone() for k, v in self.net.state_dict().items()})


def _data(n: int = 32) -> DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([1.0, -2.0, 0.5]) + 0.3
    return DataLoader(TensorDataset(x, y), batch_size=8, shuffle=False)


def _trainer(**kwargs: Any) -> pl.Trainer:
    return pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False, enable_progress_bar=False,
                      enable_model_summary=False, **kwargs)


def _sgd(params, lr: float = 0.1) -> torch.optim.Optimizer:
    return torch.optim.SGD(params, lr=lr, weight_decay=0.01)


def test_param_groups_no_decay_and_lr_factor():
    module = Regression(optimizer=_sgd)
    opt = module.configure_optimizers()
    decays = sorted((g["weight_decay"], len(g["params"])) for g in opt.param_groups)
    assert decays == [(0.0, 2), (0.01, 1)]  # bias and the log-scale in the no-decay group
    opt = module.optimize_groups([{"params": [module.net.weight], "lr_factor": 5.0}, {"params": []}])
    assert len(opt.param_groups) == 1 and opt.param_groups[0]["lr"] == pytest.approx(0.5)
    assert "lr_factor" not in opt.param_groups[0]


def test_manual_optimisation_equals_automatic():
    auto = Regression(optimizer=_sgd)
    _trainer(max_epochs=2).fit(auto, _data())
    manual = Regression(manual=True, optimizer=_sgd)
    _trainer(max_epochs=2).fit(manual, _data())
    for a, b in zip(auto.parameters(), manual.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    with pytest.raises(RuntimeError, match="manual optimisation"):
        auto.manual_step()


def test_ema_follows_a_loop_reference_and_is_used_for_validation():
    decay = 0.8
    module = Regression(optimizer=_sgd, ema_decay=decay)
    # reference: replay the same SGD steps by hand and average as EMA does (first step copies)
    ref = Regression(optimizer=_sgd)
    opt = ref.configure_optimizers()
    ema = None
    for x, y in _data():
        opt.zero_grad()
        ref.compute_loss((x, y))["loss"].backward()
        opt.step()
        current = {n: p.detach().clone() for n, p in ref.named_parameters()}
        ema = current if ema is None else {n: decay * ema[n] + (1 - decay) * current[n] for n in ema}
    _trainer(max_epochs=1, num_sanity_val_steps=0).fit(module, _data(), _data(8))
    for name, value in module.ema_state.items():
        torch.testing.assert_close(value, ema[name])
    # the trained weights are the raw ones; validation saw the EMA weights
    torch.testing.assert_close(module.net.weight, ref.net.weight)
    torch.testing.assert_close(module.seen[-1]["weight"], ema["net.weight"])
    with module.ema_weights():
        torch.testing.assert_close(module.net.bias, ema["net.bias"])
    torch.testing.assert_close(module.net.bias, ref.net.bias)
    with pytest.raises(ValueError, match="ema_decay"):
        Regression(ema_decay=1.0)


def test_ema_is_saved_and_restored_with_the_checkpoint(tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    module = Regression(optimizer=_sgd, ema_decay=0.5)
    # saved by ModelCheckpoint right after validation, which runs on the EMA weights
    checkpoint = ModelCheckpoint(dirpath=tmp_path, filename="after_val", save_on_train_epoch_end=False)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                         max_epochs=1, num_sanity_val_steps=0, callbacks=[checkpoint])
    trainer.fit(module, _data(), _data(8))
    saved = torch.load(tmp_path / "after_val.ckpt", weights_only=True)  # hparams stored as plain data
    torch.testing.assert_close(saved["state_dict"]["net.weight"], module.net.weight)  # the trained weights
    assert not torch.equal(module.net.weight, module.ema_state["net.weight"])
    fresh = Regression(optimizer=_sgd, ema_decay=0.5)
    fresh.on_load_checkpoint(saved)
    for name, value in module.ema_state.items():
        torch.testing.assert_close(fresh.ema_state[name], value)


@pytest.mark.parametrize(("interval", "max_epochs", "expected"), [("epoch", 3, 3), ("step", 3, 12)])
def test_scheduler_total_follows_the_trainer(interval, max_epochs, expected):
    module = Regression(optimizer=_sgd, lr_scheduler=lambda o: WarmupCosineLR(o, warmup=1),
                        lr_scheduler_interval=interval)
    trainer = _trainer(max_epochs=max_epochs)
    trainer.fit(module, _data())
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.total == expected
    steps = expected  # every scheduler step was taken: the lr is the factor at the end of the schedule
    want = 0.1 * warmup_cosine_factor(steps, 1, expected, 0.1, 0.0)
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(want, abs=1e-9)
    # a config that sets total keeps it
    fixed = WarmupCosineLR(torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0), warmup=0, total=7)
    assert fixed.total == 7 and fixed.get_last_lr()[0] == pytest.approx(1.0)


def test_set_total_reapplies_the_current_lr():
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = WarmupCosineLR(opt, warmup=0, total=None)
    sched.set_total(4)
    assert opt.param_groups[0]["lr"] == pytest.approx(1.0)
    sched.step()
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))


def test_temperature_is_clamped_after_every_step():
    module = Regression(optimizer=lambda p: torch.optim.SGD(p, lr=1e-3))
    module.scale.log_scale.data.fill_(math.log(1e6))  # stored far above the clamp of 20
    _trainer(max_steps=1).fit(module, _data())
    assert float(module.scale.log_scale.exp()) == pytest.approx(20.0, rel=1e-5)


class FailingValidation(Regression):
    def validation_step(self, batch: Any, batch_idx: int) -> None:
        raise RuntimeError("planted failure")


def test_an_exception_during_evaluation_puts_the_trained_weights_back():
    module = FailingValidation(optimizer=_sgd, ema_decay=0.5)
    trainer = _trainer(max_epochs=1, num_sanity_val_steps=0)
    with pytest.raises(RuntimeError, match="planted failure"):
        trainer.fit(module, _data(), _data(8))
    trained = module.net.weight.detach().clone()
    assert not torch.equal(trained, module.ema_state["net.weight"])  # the EMA differs from the trained weights
    with module.ema_weights():  # and the swap still works: nothing was left swapped in
        torch.testing.assert_close(module.net.weight, module.ema_state["net.weight"])
    torch.testing.assert_close(module.net.weight, trained)
    ref = Regression(optimizer=_sgd)  # the same SGD steps without EMA: the trained weights
    _trainer(max_epochs=1).fit(ref, _data())
    torch.testing.assert_close(trained, ref.net.weight)


def test_a_resumed_run_stretches_a_schedule_that_follows_the_trainer(tmp_path):
    sched = lambda o: WarmupCosineLR(o, warmup=1)  # noqa: E731
    first = Regression(optimizer=_sgd, lr_scheduler=sched)
    trainer = _trainer(max_epochs=2)
    trainer.fit(first, _data())
    trainer.save_checkpoint(tmp_path / "two.ckpt")
    resumed = Regression(optimizer=_sgd, lr_scheduler=sched)
    trainer = _trainer(max_epochs=4)
    trainer.fit(resumed, _data(), ckpt_path=str(tmp_path / "two.ckpt"))
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scheduler.total == 4 and scheduler.last_epoch == 4
    assert trainer.optimizers[0].param_groups[0]["lr"] == pytest.approx(0.1 * warmup_cosine_factor(4, 1, 4, 0.1, 0.0))
    # without a total, only the warm-up applies, then a flat 1.0
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    assert [WarmupCosineLR(opt, warmup=2).factor(s) for s in range(4)] == pytest.approx([0.1, 0.55, 1.0, 1.0])


class Exporting(Regression):
    """Logs a validation score that is best after the first epoch and records what export saw."""

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        self.log("val_score", -float(self.current_epoch))

    def export(self, directory: Any) -> list:
        self.exported = {k: v.detach().clone() for k, v in self.net.state_dict().items()}
        return []


@pytest.mark.parametrize("choice", ["best", "last"])
def test_export_writes_the_chosen_weights(tmp_path, choice):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from mmembed.lit.callbacks import ExportArtifacts

    module = Exporting(optimizer=_sgd, export_weights=choice)
    best = ModelCheckpoint(dirpath=tmp_path, filename="best", monitor="val_score", mode="max")
    pl.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
               default_root_dir=tmp_path, max_epochs=3, num_sanity_val_steps=0,
               callbacks=[best, ExportArtifacts()]).fit(module, _data(), _data(8))
    saved = torch.load(best.best_model_path, weights_only=True)["state_dict"]
    final = module.net.weight.detach()
    want = saved["net.weight"] if choice == "best" else final
    torch.testing.assert_close(module.exported["weight"], want)
    assert not torch.equal(saved["net.weight"], final)  # the two choices really differ
    torch.testing.assert_close(module.net.weight, final)  # the trained weights are back after the export


def test_python_built_checkpoints_read_weights_only_and_rebuild_their_factories(tmp_path):
    from functools import partial

    module = Regression(optimizer=partial(torch.optim.SGD, lr=0.05, momentum=0.5),
                        lr_scheduler=partial(WarmupCosineLR, warmup=1))
    trainer = _trainer(max_epochs=1)
    trainer.fit(module, _data())
    trainer.save_checkpoint(tmp_path / "m.ckpt")
    saved = torch.load(tmp_path / "m.ckpt", weights_only=True)  # classes and partials stored as plain data
    assert saved["hyper_parameters"]["optimizer"] == {"class_path": "torch.optim.sgd.SGD",
                                                       "init_args": {"lr": 0.05, "momentum": 0.5}}
    reloaded = Regression.load_from_checkpoint(tmp_path / "m.ckpt", weights_only=True)
    optimizer = reloaded.optimizer_factory(reloaded.parameters())
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.defaults["momentum"] == 0.5
    assert isinstance(reloaded.scheduler_factory(optimizer), WarmupCosineLR)
    torch.testing.assert_close(reloaded.net.weight, module.net.weight)
