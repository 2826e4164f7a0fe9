"""``python -m fastrnn check ...``: see ``fastrnn.check``."""
import sys

USAGE = "usage: python -m fastrnn check [--device cpu|cuda|all] [--quick|--full] [--json FILE] [--seed N]"


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE)
        return 0 if argv else 2
    if argv[0] == "check":
        from .check import main as check
        return check(argv[1:])
    print(f"python -m fastrnn: unknown command {argv[0]!r}\n{USAGE}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
