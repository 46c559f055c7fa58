import pytest
import torch

# `python -m vfm_lab` runs the CLI on import: keep doctest collection away from it.
collect_ignore = ["vfm_lab/__main__.py"]


@pytest.fixture
def one_thread():
    """Tiny models gain nothing from a second thread; one keeps their timings steady on a busy CPU.
    A test module opts in with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
