"""Live (online) training: one process per expert, fed over queues, gated by champion/challenger.

Where things are:
  manager.py       TrainingManager, the engine's one object (core.types.LiveTraining)
  feed.py          the engine-side feed buffer, the maturing and release rule (Feeder, FeedBuffer)
  supervisor.py    trainer processes: spawn, stop, reap, restart with back-off, freeze/thaw, hold
  worker.py        what runs INSIDE a trainer process (trainer_main) and its TrainerSpec
  judge.py         verdicts on published checkpoints (trainer-scored or on the evaluator thread)
  live_weights.py  models/<expert>/online/live.pt: resume at start-up, background writer
The promotion rule itself is NN/training/promotion.py; how an expert learns in one round is its own
``train_online`` (NN/experts/).
"""

from NN.training.online.feed import FeedBuffer, batch_from_rows, split_release
from NN.training.online.live_weights import LIVE_FILE, live_path, resume_live
from NN.training.online.manager import TrainingManager
from NN.training.online.worker import TrainerSpec, trainer_cpus, trainer_main

__all__ = ["LIVE_FILE", "FeedBuffer", "TrainerSpec", "TrainingManager", "batch_from_rows", "live_path",
           "resume_live", "split_release", "trainer_cpus", "trainer_main"]
