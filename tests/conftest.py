import os

# the suite is sized for 2 CPU cores, run by 2 pytest-xdist workers (``make test``): one thread
# each (2 for a run without workers); more threads only add contention there
os.environ.setdefault("OMP_NUM_THREADS", "1" if os.environ.get("PYTEST_XDIST_WORKER") else "2")

# modules that take minutes, slowest first: the workers take whole modules in collection order
# (--dist loadscope --no-loadscope-reorder), so these start first and the two finish together
SLOWEST_FIRST = (
    "test_original_checkpoints.py",
    "test_calibration.py",
    "test_demo.py",
    "test_server.py",
    "test_ssl.py",
)


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(SLOWEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order within
