import subprocess
import sys

import pytest

from autocomp.config import parse_budget
from autocomp.errors import UserError


@pytest.mark.parametrize(
    "text, ms",
    [("10ms", 10.0), ("10 ms", 10.0), ("0.5ms", 0.5), ("2e-3s", 2.0), ("1500us", 1.5), ("1s", 1000.0), (" 3MS ", 3.0), (".25 ms", 0.25)],
)
def test_valid_budgets(text, ms):
    assert parse_budget(text) == pytest.approx(ms)


@pytest.mark.parametrize(
    "text", ["10", "10 parsecs", "10m", "0ms", "-5ms", "nanms", "NaN ms", "infms", "inf ms", "10ms garbage", "10msx", "", "ms", "1e999ms"],
)
def test_invalid_budgets(text):
    with pytest.raises(UserError, match="--budget"):
        parse_budget(text)


@pytest.mark.parametrize("budget", ["10", "abc", "-1ms", "nan ms", "5 ms!"])
def test_cli_rejects_bad_budget_with_one_line_and_exit_2(budget, tmp_path):
    out = tmp_path / "run"
    p = subprocess.run([sys.executable, "-m", "autocomp.cli", "search", "--budget", budget, "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 2
    lines = [ln for ln in p.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and "--budget" in lines[0] and "Traceback" not in p.stderr
    assert not out.exists()
