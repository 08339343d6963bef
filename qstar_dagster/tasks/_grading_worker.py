"""Helper process for grading off the main thread (see grading._HelperProcess): reads
`[function, args]` JSON lines on stdin, answers one JSON value per line on stdout."""

import json
import sys

from qstar_dagster.tasks import grading

_FUNCTIONS = {"_verify_here": grading._verify_here, "_parses_here": grading._parses_here}


def main() -> None:
    for line in sys.stdin:
        name, args = json.loads(line)
        try:
            result = bool(_FUNCTIONS[name](*args))
        except Exception:  # noqa: BLE001  (an erroring comparison is no match, as in math-verify)
            result = False
        sys.stdout.write(json.dumps(result) + "\n")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
