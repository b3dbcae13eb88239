"""The unit's main process: start the plan's argv as `up` would, record it, wait, stop it on SIGTERM.

`python -m dsv4setup.service.run --workdir W --host H --port P --env-names A,B [--api-key-file F] -- ARGV...`
starts ARGV through the log pump with --tee (so every line reaches logs/serve.log and the
journal), writes <workdir>/run/serve.json (with the unit's name), and exits with the server's
exit code (non-zero makes systemd restart it: Restart=on-failure). On SIGTERM (systemctl stop)
it stops the server's whole process tree itself and exits 0.
`--env-names` lists the plan's variables among those systemd set, for the command fingerprint.
`--api-key-file` is the 0600 file with the server's API key: read here, by the unit's own user (never
by systemd, which as PID 1 would open it as root through any symlink the user put there), and given
to vLLM as VLLM_API_KEY; a key file that cannot be read stops the start (never a server without its key).
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from dsv4setup.core.secrets import register_secret
from dsv4setup.core.workdir import Workdir
from dsv4setup.serve.process import ServerRecord, start_server, stop_server, write_record
from dsv4setup.service.systemd import unit_name


def read_api_key(path: Path) -> str | None:
    """The key in `path` (one line), registered as a secret; None when it is missing or empty."""
    try:
        key = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError):
        return None
    register_secret(key)
    return key or None


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dsv4setup.service.run")
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--env-names", default="-")
    parser.add_argument("--api-key-file")
    parser.add_argument("command", nargs=argparse.REMAINDER)
    args = parser.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        parser.error("the server's command line must follow --")
    workdir = Workdir(Path(args.workdir).absolute()).ensure()
    names = [] if args.env_names == "-" else args.env_names.split(",")
    env = {name: os.environ[name] for name in names if name in os.environ}
    if args.api_key_file:
        key = read_api_key(Path(args.api_key_file))
        if key is None:
            print(f"dsv4setup: cannot read the API key from {args.api_key_file}: not starting a server without it "
                  "(run `dsv4setup service install` again)", file=sys.stderr, flush=True)
            return 1
        env["VLLM_API_KEY"] = key  # not part of the command fingerprint (NOT_FINGERPRINTED_ENV)
    record: ServerRecord | None = None
    stopping = False

    def stop(signum: int, frame: FrameType | None) -> None:
        nonlocal stopping
        stopping = True
        if record is not None:
            stop_server(workdir, record, via_systemd=False)

    signal.signal(signal.SIGTERM, stop)  # before the start: a stop during it must not orphan the server
    signal.signal(signal.SIGINT, stop)
    started, proc = start_server(command, env, host=args.host, port=args.port, log_path=workdir.log_file("serve"),
                                 cwd=workdir.root, tee=True)
    record = ServerRecord(**{**started.__dict__, "unit": unit_name(workdir)})
    write_record(workdir, record)
    if stopping:
        stop_server(workdir, record, via_systemd=False)
    code = proc.wait()
    if not stopping:  # the server died by itself: clear its leftovers; systemd restarts the unit
        stop_server(workdir, record, via_systemd=False)
        print(f"dsv4setup: the server exited with code {code}", file=sys.stderr, flush=True)
    return 0 if stopping else (code or 1)


if __name__ == "__main__":
    sys.exit(main())
