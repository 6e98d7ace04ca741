"""What the test scripts share: running their checks and reporting them."""

import sys
import traceback


def run(checks):
    """Runs `checks` in order, printing one line each; stops at the first
    failure (later checks build on earlier ones). Exits 0 only if all pass."""
    for i, check in enumerate(checks):
        try:
            check()
        except Exception:
            print(f"FAIL {check.__name__}", flush=True)
            traceback.print_exc(file=sys.stdout)
            for rest in checks[i + 1:]:
                print(f"not run {rest.__name__}")
            sys.exit(1)
        print(f"ok {check.__name__}", flush=True)
    print(f"all {len(checks)} checks passed")
    sys.exit(0)
