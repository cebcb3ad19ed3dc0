"""python -m lmx.data fetch NAME [--url MIRROR]: download, check the sha256, cache, print the
folder; `python -m lmx.data list`: the downloads lmx knows (lmx.data.fetch)."""
import sys

from absl import app, flags

from lmx.data import fetch

flags.DEFINE_string("url", "", "fetch from this mirror (http(s):// or file://) instead of the "
                    "official URL; it must match the same sha256")
FLAGS = flags.FLAGS
USAGE = "usage: python -m lmx.data fetch NAME [--url MIRROR] | python -m lmx.data list"


def main(argv: list[str]) -> None:
    command = argv[1:]
    if command == ["list"]:
        for name, spec in sorted(fetch.DOWNLOADS.items()):
            print(f"{name}\t{spec.url}\tsha256 {spec.sha256}\t{spec.licence}")
        return
    if len(command) != 2 or command[0] != "fetch":
        raise app.UsageError(f"{USAGE}\nknown names: {sorted(fetch.DOWNLOADS)}")
    try:
        print(fetch.fetch(command[1], url=FLAGS.url))
    except ValueError as e:  # unknown name, checksum mismatch, incomplete archive
        sys.exit(f"python -m lmx.data fetch: {e}")


if __name__ == "__main__":
    app.run(main)
