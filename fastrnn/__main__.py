"""``python -m fastrnn check|bench ...``: see ``fastrnn.check`` and ``fastrnn.bench``."""
import sys

USAGE = """usage: python -m fastrnn {check,bench} [options]

  check   every available backend against torch.nn on this machine (fastrnn.check)
          [--device cpu|cuda|all] [--quick|--full] [--json FILE] [--seed N]
  bench   time every available backend beside torch.nn on your shapes (fastrnn.bench)
          [--cell lstm|gru|rnn|lstmcell|grucell|rnncell] [--layers N] [--hidden N] [--batch N]
          [--seq N] [--dtype float32|float64|bfloat16|float16] [--train|--forward] [--json FILE] [--plot FILE]

'python -m fastrnn COMMAND --help' lists every option of a command."""


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE, file=sys.stdout if argv else sys.stderr)
        return 0 if argv else 2
    command, rest = argv[0], argv[1:]
    if command == "check":
        from .check import main as run
    elif command == "bench":
        from .bench import main as run
    else:
        print(f"python -m fastrnn: unknown command {command!r}\n{USAGE}", file=sys.stderr)
        return 2
    try:
        return run(rest)
    except SystemExit as e:  # argparse's usage errors (exit 2) and --help (exit 0)
        return e.code if isinstance(e.code, int) else 2
    except KeyboardInterrupt:
        print("python -m fastrnn: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
