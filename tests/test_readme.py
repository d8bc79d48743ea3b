"""The README's examples run as printed and do what they say: one exact GN step lowers the loss of its batch
(at rate 0.5 the first-order model predicts a fall to about a quarter of the way for the error), and a study's
grid starts from each arm's rate grid on its first seed."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def test_the_own_loop_example_runs_and_one_gn_step_lowers_its_batch_loss():
    section = README.read_text().split("## Exact GN in your own training loop", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    assert scope["after"] < 0.9 * scope["before"], (scope["before"], scope["after"])


def test_the_study_example_declares_a_sweep_that_starts_from_each_arms_grid_on_the_first_seed(tmp_path):
    section = README.read_text().split("The book's own experiments are studies", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    scope: dict = {}
    exec(compile(code, str(README), "exec"), scope)
    grid = scope["small"](store=tmp_path)  # an empty store: nothing recorded, so no rate chosen yet
    assert grid.topic == "my_topic/small"
    assert sorted((s.optimizer.name, s.optimizer.lr, s.seed) for s in grid.specs) == sorted(
        [("gn", lr, 0) for lr in (0.1, 0.3, 1.0)] + [("adam", lr, 0) for lr in (3e-4, 1e-3, 3e-3)])
