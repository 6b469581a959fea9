"""Progress of a whole training run: after each stage-2 epoch, one log line with the epochs done, the time per
epoch (steps, saving and validation) and the estimated time left, so long runs (and logs without progress bars)
say when they will end. Stage 1 is one progress bar, whose own estimate covers it."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
import logging
import time

from geoloc_ros.model.stage2 import Stage2
from geoloc_ros.model.training import Trainer

log = logging.getLogger("geoloc.train")


def eta_text(done: int, total: int, seconds_per_epoch: float, now=None) -> str:
    """"epoch 3/24, 41 s per epoch, about 14 min left (ends about 22:31 UTC)"."""
    left = max(total - done, 0) * seconds_per_epoch
    now = now or datetime.now(timezone.utc)
    end = (now + timedelta(seconds=left)).strftime("%H:%M UTC")
    span = f"{left / 3600:.1f} h" if left >= 5400 else f"{left / 60:.0f} min" if left >= 90 else f"{left:.0f} s"
    return f"epoch {done}/{total}, {seconds_per_epoch:.0f} s per epoch, about {span} left (ends about {end})"


class EtaStage2(Stage2):
    def run(self):
        self._t0, self._first = time.monotonic(), None
        return super().run()

    def end_of_epoch(self, epoch: int, entry: dict):
        super().end_of_epoch(epoch, entry)
        if self._first is None:
            self._first = epoch
        per_epoch = (time.monotonic() - self._t0) / (epoch + 1 - self._first)
        log.info("stage 2: %s", eta_text(epoch + 1, self.cfg.epochs, per_epoch))


class EtaTrainer(Trainer):
    """The Trainer, with the stage-2 estimate of the time left in its log."""

    def stage2(self, text_features):
        return EtaStage2(self, text_features).run()
