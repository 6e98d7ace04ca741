"""Running the console script's checks and reporting them, one line each."""

import sys
import time
import traceback


def describe(check):
    """A check's first docstring line, or its name with spaces."""
    doc = (check.__doc__ or "").strip().splitlines()
    return doc[0].strip() if doc else check.__name__.replace("_", " ")


def run(checks):
    """Runs `checks` in order, printing `ok   <what>` for each; stops at the
    first failure (later checks build on earlier ones) and raises SystemExit:
    0 only if all passed. Raising (rather than exiting) lets the caller's
    `finally` quit the browser."""
    started = time.monotonic()
    for i, check in enumerate(checks):
        t0 = time.monotonic()
        try:
            check()
        except Exception as e:
            print(f"FAIL {describe(check)}: {e.__class__.__name__}: {str(e).strip().splitlines()[0] if str(e).strip() else ''}", flush=True)
            traceback.print_exc(file=sys.stdout)
            for rest in checks[i + 1:]:
                print(f"not run {describe(rest)}", flush=True)
            raise SystemExit(1)
        print(f"ok   {describe(check)} ({time.monotonic() - t0:.1f} s)", flush=True)
    print(f"all {len(checks)} checks passed in {time.monotonic() - started:.1f} s", flush=True)
    raise SystemExit(0)
