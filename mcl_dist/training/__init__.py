"""One stage's training: the loop (loop.py), the engines behind one interface (engine.py: DDP,
engine_deepspeed.py), the optimizer and lr schedule, periodic checkpoints, the metrics log and its
loggers, and the memory estimate the dry run prints. The losses are the objectives'."""
