import sys
from pathlib import Path

import pytest

ANCHORS = Path(__file__).resolve().parents[3] / "shared" / "anchors"


@pytest.fixture(scope="session")
def workload():
    """The anchor benchmarks' shared workload module: the reference answer for digits and the Dirichlet split."""
    if not (ANCHORS / "workload.py").exists():
        pytest.skip(f"needs the anchor benchmarks at {ANCHORS}")
    sys.path.insert(0, str(ANCHORS))
    try:
        import workload
    finally:
        sys.path.remove(str(ANCHORS))
    return workload
