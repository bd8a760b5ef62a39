import os
import tempfile

import pytest

# Kernel builds go to a fresh cache, so the tests exercise the build itself.
os.environ.setdefault("RATSWEEP_CACHE_DIR", tempfile.mkdtemp(prefix="ratsweep-test-cache-"))


def pytest_collection_modifyitems(config, items):
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
