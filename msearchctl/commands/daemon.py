"""`daemon status`, `stop`, `install` and `uninstall`: check on the daemon, stop it, have systemd run it."""

import sys
from pathlib import Path
from typing import Annotated

import typer

from msearchctl.exits import EXIT_REFUSED, daemon, fail
from msearchctl.options import JsonOpt
from msearchctl.output import print_json

app = typer.Typer()


@app.command("status")
def daemon_status(
    ctx: typer.Context,
    wait_for: Annotated[
        float | None,
        typer.Option(
            "--wait",
            metavar="SECONDS",
            min=0,
            show_default=False,
            help="Wait up to this long for the daemon to answer, as after starting it.",
        ),
    ] = None,
    as_json: JsonOpt = False,
) -> None:
    """Say whether the daemon answers (exit 0) or not (exit 3), and how busy it is."""
    with daemon(ctx, wait_for) as client:
        result = client.status()
    if as_json:
        print_json(result)
    else:
        w = result["workers"]
        print(
            f"msearchd {result['version']} running (pid {result['pid']}, up {result['uptime']:.0f} s): "
            f"{w['busy']}/{w['total']} workers busy, {result['pending']} pending; socket {result['socket']}"
        )


@app.command("stop")
def daemon_stop(ctx: typer.Context, as_json: JsonOpt = False) -> None:
    """Stop the daemon; running tasks go back to pending. Returns once it has stopped."""
    with daemon(ctx) as client:
        info = client.status()
        client.shutdown()
        client.wait_closed()
    if as_json:
        print_json({"stopped": True, "pid": info["pid"]})
    else:
        print(f"msearchd (pid {info['pid']}) stopped")


def _unit_folder() -> Path:
    import os

    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def _option_value(args: list[str], name: str) -> str | None:
    """The value given to option `name` among msearchd's arguments (`--name V` or `--name=V`)."""
    for i, arg in enumerate(args):
        if arg == name and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith(name + "="):
            return arg.partition("=")[2]
    return None


def _installed_msearchd() -> str:
    import shutil

    beside = Path(sys.executable).parent / "msearchd"
    found = str(beside) if beside.exists() else shutil.which("msearchd")
    if found is None:
        fail("cannot find the msearchd executable to run; is the package installed?", EXIT_REFUSED)
    return str(Path(found).absolute())


def _print_changes(done: str, paths: list[str], then: str, commands: list[str]) -> None:
    """What install or uninstall did to the unit files, and the systemctl commands left to the user."""
    for path in paths:
        print(f"{done} {path}")
    print(then)
    for command in commands:
        print(f"  {command}")


@app.command("install", context_settings={"ignore_unknown_options": True, "allow_interspersed_args": False})
def daemon_install(
    msearchd_args: Annotated[
        list[str] | None,
        typer.Argument(metavar="[-- MSEARCHD_ARGS...]", help="Options for msearchd, e.g. -- --workers 4."),
    ] = None,
    socket_activation: Annotated[
        bool,
        typer.Option(
            "--socket-activation", help="Also write msearchd.socket: the first client's connection starts it."
        ),
    ] = False,
    force: Annotated[bool, typer.Option("--force", help="Replace units written by someone else.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Write systemd user units that run msearchd at login, restart it if it dies and log to the journal.

    The units go to $XDG_CONFIG_HOME/systemd/user (default ~/.config/systemd/user); it then says the
    commands that enable and start them. Nothing is started by this command.
    """
    from msearchd import units

    args = list(msearchd_args or [])
    grace_text = _option_value(args, "--grace")
    try:
        grace = float(grace_text) if grace_text is not None else 5.0
    except ValueError:
        raise typer.BadParameter(f"--grace {grace_text!r} is not a number of seconds") from None
    folder = _unit_folder()
    wanted = {units.SERVICE: units.service_unit(_installed_msearchd(), args, grace, socket_activation)}
    if socket_activation:
        listen = _option_value(args, "--socket")
        socket_path = str(Path(listen).absolute()) if listen else units.DEFAULT_LISTEN
        wanted[units.SOCKET] = units.socket_unit(socket_path)
    for name in wanted:
        path = folder / name
        if path.exists() and not force and not path.read_text().startswith(units.MARK):
            fail(f"{path} exists and was not written by msearchctl; give --force to replace it", EXIT_REFUSED)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in wanted.items():
        (folder / name).write_text(units.marked(text))
        written.append(str(folder / name))
    if not socket_activation and (folder / units.SOCKET).exists():
        stale = folder / units.SOCKET
        if stale.read_text().startswith(units.MARK):
            stale.unlink()  # an earlier install with socket activation: the service now binds itself
    start = units.SOCKET if socket_activation else units.SERVICE
    commands = ["systemctl --user daemon-reload", f"systemctl --user enable --now {start}"]
    if as_json:
        print_json({"written": written, "commands": commands})
        return
    _print_changes("wrote", written, "enable and start it with:", commands)


@app.command("uninstall")
def daemon_uninstall(as_json: JsonOpt = False) -> None:
    """Remove the units `daemon install` wrote, and their links from `systemctl --user enable`."""
    from msearchd import units

    folder = _unit_folder()
    removed = []
    for name in (units.SERVICE, units.SOCKET):
        path = folder / name
        if path.exists() and path.read_text().startswith(units.MARK):
            for link in folder.glob(f"*.wants/{name}"):
                link.unlink()
                removed.append(str(link))
            path.unlink()
            removed.append(str(path))
    commands = [
        f"systemctl --user stop {units.SOCKET} {units.SERVICE}",
        "systemctl --user daemon-reload",
    ]
    if as_json:
        print_json({"removed": removed, "commands": commands if removed else []})
        return
    if not removed:
        print(f"no units written by msearchctl in {folder}")
        return
    then = "stop a daemon it still runs, and let systemd forget the units, with:"
    _print_changes("removed", removed, then, commands)
