"""Study helpers: command chains run in parallel, and TensorBoard scalars read back."""

from __future__ import annotations

import sys

import pytest

from mmembed.eval.runs import Job, latest_version, read_scalars, run_jobs


def _py(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_run_jobs_chains_commands_marks_done_and_reports_failures(tmp_path):
    ok = Job("ok", str(tmp_path / "ok"), [_py("print('first')"), _py("print('second')")])
    checked = Job("checked", str(tmp_path / "checked"), [_py("print('stopped early')")],
                  check=lambda log: "reached" in log)  # exit 0, but the log says it did not finish
    broken = Job("broken", str(tmp_path / "broken"), [_py("raise SystemExit(3)"), _py("print('never')")])
    with pytest.raises(RuntimeError, match="(?s)checked.*broken: exit 3"):
        run_jobs([ok, checked, broken], parallel=2, threads=1)
    assert ok.done and not checked.done and not broken.done
    assert (tmp_path / "ok" / "fit.log").read_text().split() == ["first", "second"]
    assert "never" not in (tmp_path / "broken" / "fit.log").read_text()  # the chain stops at a failure
    assert float((tmp_path / "ok" / "done").read_text()) > 0


def test_read_scalars_in_step_order_from_the_newest_version(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    for version, offset in ((0, 100.0), (10, 0.0)):  # version_10 is newer than version_2 / version_0
        writer = SummaryWriter(str(tmp_path / "run" / f"version_{version}"))
        for step in (2, 0, 1):
            writer.add_scalar("val/r1", offset + step, step)
        writer.add_scalar("train/loss", 0.5, 0)
        writer.close()
    version = latest_version(str(tmp_path))
    assert version.endswith("version_10")
    assert read_scalars(version, ["val/r1", "missing"]) == {"val/r1": [0.0, 1.0, 2.0]}
    assert set(read_scalars(version)) == {"val/r1", "train/loss"}
    with pytest.raises(FileNotFoundError, match="did the run start"):
        latest_version(str(tmp_path / "nothing"))
