"""The README's own-loop example runs as printed, and does what it says: one exact GN step lowers the loss of
its batch (at rate 0.5 the first-order model predicts a fall to about a quarter of the way for the error)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_own_loop_example_runs_and_one_gn_step_lowers_its_batch_loss():
    section = README.read_text().split("## Exact GN in your own training loop", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    assert scope["after"] < 0.9 * scope["before"], (scope["before"], scope["after"])
