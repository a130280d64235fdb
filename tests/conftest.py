import os

# the suite is sized for 2 CPU cores; more threads only add contention there
os.environ.setdefault("OMP_NUM_THREADS", "2")
