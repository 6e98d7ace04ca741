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


def refusal(fn, *args, **kwargs):
    """Calls fn, which must fail with an HTTP 4xx answer; returns the status.

    The client raises the builtin ConnectionError(status, body) for any
    answer >= 400 (a network failure raises requests' own exception instead,
    which is not caught here).
    """
    try:
        got = fn(*args, **kwargs)
    except ConnectionError as e:
        if e.args and isinstance(e.args[0], int):
            status = e.args[0]
            assert 400 <= status < 500, f"want a 4xx refusal, got {e.args!r}"
            return status
        raise
    raise AssertionError(f"want a refusal, got an answer: {got!r}")
