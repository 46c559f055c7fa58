import os

import pytest
import torch

# `python -m vfm_lab` runs the CLI on import: keep doctest collection away from it.
collect_ignore = ["vfm_lab/__main__.py"]

# Skips that CI allows: data sets that `make test` does not build (data_scripts/fetch.sh builds them,
# minutes each). Under CI any other skip (a missing package, Fashion-MNIST, Chromium) is a failure.
DATA_NOT_BUILT = "is not built here"


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread; one keeps their timings steady on a busy CPU.
    A test module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``.
    ``VFM_LAB_TEST_THREADS`` sets another count (``make test-kernels`` runs the learning tests with 1 and 2)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("VFM_LAB_TEST_THREADS", "1")))
    yield
    torch.set_num_threads(threads)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Under CI (``CI`` set), a skipped check is a failed one, unless it names data the suite does not build."""
    report = (yield).get_result()
    expected_failure = hasattr(report, "wasxfail")  # an xfail also reports as skipped: it is not a skip
    if os.environ.get("CI") and report.skipped and not expected_failure and DATA_NOT_BUILT not in str(report.longrepr):
        report.outcome = "failed"
        report.longrepr = f"skipped under CI, where every check must run: {report.longrepr}"
