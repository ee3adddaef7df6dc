"""The check every Python conformance script makes: it prints `ok` or `FAIL` for each, and the
first failure ends the run; `summary` prints the line the Rust tests look for."""
import sys

_passed = 0


def check(name, actual, expected):
    global _passed
    if actual != expected:
        print(f"FAIL {name}: expected {expected!r}, got {actual!r}")
        sys.exit(1)
    _passed += 1
    print(f"ok   {name}")


def summary():
    print(f"{_passed} passed, 0 failed")
