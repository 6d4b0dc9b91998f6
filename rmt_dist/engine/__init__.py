"""The training engine: strategies (ddp | fsdp | deepspeed), precision, EMA, checkpoints, Trainer.

    from rmt_dist.engine.run import run          # run(cfg) -> exit code
    from rmt_dist.engine.trainer import Trainer  # train_step / train / evaluate
    from rmt_dist.engine.preempt import request_stop, EXIT_PREEMPTED

Submodules are imported on use (no import-time cost or side effects here).
"""
