"""torchrun entry point for the fault tests: `gtcompress ...` in which rank $FAULT_RANK raises in the first
training epoch of stage $FAULT_STAGE (default the Standard Teacher), mid-epoch, while the others wait in DDP: a
RuntimeError (a bug), or with FAULT_KIND=user a UserError (a mistake only that rank finds)."""

import os

import gtcompress.train as train
from gtcompress.cli import app
from gtcompress.errors import UserError

_train = train.Epoch.train


def _faulty(self, epoch, tick):
    if (self.ctx.dist.rank, epoch, self.job.name) == (
        int(os.environ["FAULT_RANK"]),
        0,
        os.environ.get("FAULT_STAGE", "standard_teacher"),
    ):
        if os.environ.get("FAULT_KIND") == "user":
            raise UserError("injected mistake", "the hint")
        raise RuntimeError("injected fault")
    return _train(self, epoch, tick)


train.Epoch.train = _faulty
app(prog_name="gtcompress")
