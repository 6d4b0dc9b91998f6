"""The on-disk formats of checkpoints: directory layout and manifest (dirs.py, no torch), ZeRO-3 partitions (zero3.py)."""
