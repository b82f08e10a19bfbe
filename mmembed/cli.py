"""The ``mmembed`` command: a LightningCLI with mmembed's base classes and links.

Usage::

    mmembed fit -c experiments/quickstart.yaml
    mmembed test -c runs/quickstart/version_0/config.yaml --ckpt_path runs/quickstart/version_0/checkpoints/best.ckpt

Any :class:`~mmembed.lit.module.TrainModule` subclass and any
:class:`~mmembed.data.base.DataModule` subclass can be named with ``class_path``;
there is no registry. Unknown keys fail while parsing, before any work starts.
"""

from __future__ import annotations

import warnings
from typing import Any

from lightning.pytorch.cli import ArgsType, LightningArgumentParser, LightningCLI

from mmembed.data.base import DataModule
from mmembed.lit.module import TrainModule


_SUBCOMMANDS = ("fit", "validate", "test", "predict")


def _processor_of(model: Any) -> Any:
    return getattr(model, "processor", None)  # a module without a processor links None


class MMEmbedCLI(LightningCLI):
    """LightningCLI in subclass mode with the model-to-datamodule processor link.

    The model owns its image transforms, tokenizer and batch collation (its processor); at
    instantiation it is passed to ``data.init_args.processor``, so no config repeats them.
    """

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.link_arguments("model", "data.init_args.processor", compute_fn=_processor_of, apply_on="instantiate")

    def _prepare_subcommand_parser(self, klass: type, subcommand: str, **kwargs: Any) -> LightningArgumentParser:
        parser = super()._prepare_subcommand_parser(klass, subcommand, **kwargs)
        if subcommand in ("validate", "test"):
            # The module prints one paper-style row of metrics; Lightning's own table would repeat it for
            # the query and the gallery dataloader. `--verbose true` brings it back.
            parser.set_defaults(verbose=False)
        return parser


class _ParseOnlyCLI(MMEmbedCLI):
    def before_instantiate_classes(self) -> None:
        pass

    def instantiate_classes(self) -> None:
        pass


def _cli_kwargs() -> dict[str, Any]:
    return {
        "subclass_mode_model": True,
        "subclass_mode_data": True,
        "auto_configure_optimizers": False,
        "save_config_kwargs": {"overwrite": True},
        # argparse would accept a prefix of a key (--trainer.max_epoch); a typo must fail instead.
        "parser_kwargs": {"allow_abbrev": False, **{sub: {"allow_abbrev": False} for sub in _SUBCOMMANDS}},
    }


def parse_config(args: ArgsType) -> Any:
    """Parse and validate a config stack without building anything.

    Args:
        args: e.g. ``["-c", "experiments/quickstart.yaml", "--trainer.max_epochs=1"]`` (no subcommand).

    Returns:
        The parsed ``jsonargparse.Namespace``; raises ``SystemExit`` with the parser's message on errors.
    """
    return _ParseOnlyCLI(TrainModule, DataModule, args=args, run=False, **_cli_kwargs()).config


def main(args: ArgsType = None, run: bool = True) -> MMEmbedCLI:
    """Run the CLI (``args=None`` reads ``sys.argv``).

    Args:
        args: Command-line arguments, a list of strings or a dict.
        run: Run the subcommand; ``False`` only parses and instantiates.

    Returns:
        The CLI object (``cli.trainer``, ``cli.model``, ``cli.datamodule``).
    """
    # A deprecation inside Lightning's own code (torch >= 2.10 pytree API); nothing a user can act on.
    warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")
    return MMEmbedCLI(TrainModule, DataModule, args=args, run=run, **_cli_kwargs())


def console() -> int:
    """Entry point of the ``mmembed`` console script."""
    main()
    return 0
