"""Run by the tests in a process started with the variables JAX reads when it starts (several CPU devices):
`bp-jax ARGV` for each ARGV of the JSON list in sys.argv[1], one after another in this process
(helpers.run_cli). Prints a JSON list of [exit status, stdout, stderr], one a command."""

import json
import sys

from helpers import run_cli

results = [run_cli(*argv, check=False) for argv in json.loads(sys.argv[1])]
print(json.dumps([[result.returncode, result.stdout, result.stderr] for result in results]))
