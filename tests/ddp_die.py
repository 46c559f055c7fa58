"""Run on two ranks by tests/test_distributed.py: rank 1 dies (os._exit) at its third step;
rank 0 must fail with an error soon after instead of waiting forever in a collective."""
import os
import sys
import time

from tests.toy import LinearToy, toy_data
from vfm_lab.distributed import leave_broken_group
from vfm_lab.engine import fit


class DiesOnRank1(LinearToy):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, batch):
        self.calls += 1
        if os.environ["RANK"] == "1" and self.calls == 3:
            os._exit(17)  # what a killed or crashed process looks like to its peers
        return super().forward(batch)


if __name__ == "__main__":
    start = time.time()
    try:
        fit(DiesOnRank1(), toy_data(), epochs=50, batch_size=8, lr=0.01, device="cpu", precision="fp32",
            progress=False)
    except Exception as e:  # noqa: BLE001 - reported to the test, whatever the backend raises
        print(f"rank {os.environ['RANK']} stopped after {time.time() - start:.1f} s: {type(e).__name__}: {e}"[:300],
              flush=True)
        leave_broken_group(3)  # as `vfm-lab train` does
        sys.exit(3)
    sys.exit(0)
