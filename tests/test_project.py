"""Project invariants: CI runs README's test command verbatim; the core imports no heavy deps."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).parent.parent


def readme_commands() -> list[str]:
    block = re.search(r"```(?:bash|sh)\n(.*?)```", (ROOT / "README.md").read_text(), re.S).group(1)
    return [line for line in block.splitlines() if line and not line.startswith("#")]


def test_ci_runs_the_readme_test_command():
    main_job, tests = readme_commands()[:2]
    assert "pytest" in tests and "pytest" not in main_job
    assert tests in (ROOT / ".ci" / "run").read_text()


def test_importing_bp_jax_stays_light():
    code = (
        "import sys, bp_jax; heavy = {'torch', 'matplotlib', 'orbax', 'sklearn', 'rich', 'tqdm'}; "
        "print(sorted(heavy & {m.split('.')[0] for m in sys.modules}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"
