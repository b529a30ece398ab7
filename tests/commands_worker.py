"""Run by the tests in a process of its own: `bp-jax ARGV` for each ARGV of the JSON list in sys.argv[1], one after
another in this process (helpers.run_cli), where the process is what the commands need (started with the variables
JAX reads when it starts: several CPU devices; or a file size limit). Prints a JSON list of [exit status, stdout,
stderr], one a command.

With a size in bytes after the list, the kernel refuses to grow any file beyond it (EFBIG), as a full disk refuses
(ENOSPC), midway through a write (Python ignores the SIGXFSZ that comes with it). The limit is set here, in the new
interpreter, not between fork and exec: the test's process runs JAX's threads."""

import json
import resource
import sys

if len(sys.argv) > 2:
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), int(sys.argv[2])))

from helpers import run_cli  # after the limit: what it imports writes under it, as the commands' imports did

results = [run_cli(*argv, check=False) for argv in json.loads(sys.argv[1])]
print(json.dumps([[result.returncode, result.stdout, result.stderr] for result in results]))
