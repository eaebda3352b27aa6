"""The commands of DESIGN §6 that act or report: validate, plan, apply, daemon, status,
sandbox, demo. Each only calls the engine, ledger or renderers."""

from __future__ import annotations

import signal
import socket
import sys
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from reconciler import engine
from reconciler.cli.common import (
    EXIT_CHANGES,
    EXIT_ERROR,
    EXIT_OK,
    EXIT_REFUSED,
    act_or_request,
    complete_env,
    complete_service,
    desired_option,
    domain_errors,
    duration_between,
    err_console,
    fail,
    json_option,
    open_ledger,
    refuse_libcloud_debug,
    who_is_asking,
)
from reconciler.cli.root import cli
from reconciler.coordination.leadership import read_status as read_coordination
from reconciler.desired.gitinfo import uncommitted_changes
from reconciler.errors import GuardRefused
from reconciler.ledger import Ledger
from reconciler.model import Plan
from reconciler.planning.guards import static_refusals
from reconciler.planning.promotion import lags
from reconciler.present import render
from reconciler.present.terminal import shown
from reconciler.service.statelock import StateLock

if TYPE_CHECKING:  # imported where used: the daemon's modules load only for `daemon`
    from reconciler.service.daemon import DaemonSettings
    from reconciler.service.systemd import Notifier


@cli.command()
@desired_option
def validate(desired_dir: Path) -> None:
    """Check the desired state; exit 0 if valid, 1 if not, 3 if plan and apply would
    refuse it (an environment without services, no environments at all)."""
    with domain_errors():
        desired = engine.read_desired(desired_dir)
        refusals = static_refusals(desired)
        if refusals:
            raise GuardRefused(refusals)
    services = len(desired.services())
    click.echo(
        f"{desired_dir}: valid ({len(desired.environments)} environments, {services} services)"
    )


@cli.command()
@desired_option
@json_option
@click.option(
    "--detailed-exitcode", is_flag=True, help="Exit 2 when there are changes, 0 when none."
)
@click.pass_context
def plan(ctx: click.Context, desired_dir: Path, as_json: bool, detailed_exitcode: bool) -> None:
    """Show what `apply` would do; changes nothing."""
    refuse_libcloud_debug()
    with open_ledger(ctx) as ledger, domain_errors():
        outcome = engine.plan_pass(desired_dir, ledger)
    # What the plan was made from is not the commit alone when the checkout has edits.
    uncommitted = uncommitted_changes(desired_dir) if outcome.desired.commit else None
    if as_json:
        document = render.plan_to_json(
            outcome.plan, commit=outcome.desired.commit, guards=outcome.guards,
            costs=outcome.costs,
        )  # fmt: skip
        document["uncommitted_changes"] = uncommitted
        document["behind"] = [lag.as_dict() for lag in outcome.lags]
        render.print_json(document)
    else:
        render.print_plan(
            Console(), outcome.plan, commit=outcome.desired.commit, costs=outcome.costs,
            uncommitted=uncommitted,
        )  # fmt: skip
        render.print_lags(Console(), [lag.describe() for lag in outcome.lags])
    if outcome.guards:
        for reason in outcome.guards:
            err_console.print(f"[red]apply would be refused:[/red] {reason}", highlight=False)
        sys.exit(EXIT_REFUSED)
    if detailed_exitcode and not outcome.plan.empty:
        sys.exit(EXIT_CHANGES)


@cli.command()
@desired_option
@json_option
@click.option("--allow-mass-destroy", is_flag=True, help="Override the mass-destroy guard.")
@click.option("--yes", is_flag=True, help="Do not show the plan and ask first (on a terminal).")
@click.pass_context
def apply(
    ctx: click.Context, desired_dir: Path, as_json: bool, allow_mass_destroy: bool, yes: bool
) -> None:
    """Run one reconcile pass. On a terminal, show the plan and ask first (unless --yes)."""
    refuse_libcloud_debug()
    asked = not yes and not as_json and sys.stdin.isatty() and sys.stdout.isatty()
    console = Console()

    def confirm(plan: Plan) -> bool:
        render.print_plan(console, plan, commit=None)
        return click.confirm("Apply this plan?", default=False)

    with domain_errors(), StateLock(ctx.obj["state_dir"]), open_ledger(ctx) as ledger:
        outcome = engine.apply_pass(
            desired_dir, ledger, allow_mass_destroy=allow_mass_destroy,
            confirm=confirm if asked else None,
        )  # fmt: skip
    result = outcome.result
    assert result is not None
    if as_json:
        render.print_json(
            {
                "run": outcome.run_id,
                "commit": outcome.desired.commit,
                "ok": result.ok,
                "result": outcome.result_name,
                "counts": result.counts,
                "failures": result.failures,
                "held": [hold.as_dict() for hold in outcome.plan.held],
                "actions": [render.action_to_json(a) for a in outcome.plan.actions],
            }
        )
    else:
        if not (asked and not outcome.plan.empty):  # the plan was shown before the question
            render.print_plan(console, outcome.plan, commit=outcome.desired.commit)
        else:
            render.print_holds(console, [hold.as_dict() for hold in outcome.plan.held])
        click.echo(render.apply_summary(outcome.run_id, outcome.result_name, result))
    for failure in result.failures:
        err_console.print(f"[red]failed:[/red] {shown(failure)}", highlight=False, soft_wrap=True)
    if not result.ok:
        sys.exit(EXIT_ERROR)


def _env(name: str) -> dict[str, Any]:
    # Every daemon option can come from the unit's environment file.
    return {"envvar": f"RECONCILER_{name}", "show_envvar": True}


@cli.command()
@click.option(
    "--repo", required=True, help="Git URL or path of the desired-state repository.", **_env("REPO")
)
@click.option("--branch", default="main", show_default=True, **_env("BRANCH"))
@click.option(
    "--path", "subdir", default="", help="Desired-state directory inside the repo.", **_env("PATH")
)
@click.option(
    "--interval",
    default="60s",
    show_default=True,
    callback=duration_between(1, 86400),
    help="Between passes: 1s to 1d.",
    **_env("INTERVAL"),
)
@click.option(
    "--fetch-timeout",
    default="60s",
    show_default=True,
    callback=duration_between(1, 3600),
    help="For one git fetch: 1s to 1h.",
    **_env("FETCH_TIMEOUT"),
)
@click.option("--once", is_flag=True, help="One pass, then exit with apply's exit code.")
@click.option(
    "--allow-rewind",
    is_flag=True,
    help="Accept a branch whose history was rewritten.",
    **_env("ALLOW_REWIND"),
)
@click.option(
    "--allow-mass-destroy",
    is_flag=True,
    help="Override the mass-destroy guard.",
    **_env("ALLOW_MASS_DESTROY"),
)
@click.option(
    "--metrics-addr",
    help="Serve Prometheus metrics here, e.g. 127.0.0.1:9108.",
    **_env("METRICS_ADDR"),
)
@click.option(
    "--coordination",
    metavar="etcd://HOST:PORT[,HOST:PORT...]",
    help="Run as one member of several: only the holder of the leader lease on this etcd "
    "acts (README: Two hosts).",
    **_env("COORDINATION"),
)
@click.option(
    "--lease-ttl",
    default="30s",
    show_default=True,
    callback=duration_between(2, 600),
    help="The leader lease (with --coordination): 2s to 10m; a leader that cannot renew it "
    "stops acting before it ends.",
    **_env("LEASE_TTL"),
)
@click.option(
    "--member",
    default="",
    help="This member's name (with --coordination). [default: the host name]",
    **_env("MEMBER"),
)
@click.option(
    "--ledger-replica",
    "replica",
    metavar="URL",
    help="With --coordination: stream the ledger here with Litestream while leading and "
    "restore it on takeover: file:///DIRECTORY or s3://BUCKET/PATH.",
    **_env("LEDGER_REPLICA"),
)
@click.option(
    "--verify-commits",
    type=click.Choice(["strict", "head"]),
    help="Apply only commits signed by a trusted key: every new commit (strict) or the "
    "head (head). README: Signed commits.",
    **_env("VERIFY_COMMITS"),
)
@click.option(
    "--trusted-signers",
    metavar="FILE",
    help="With --verify-commits: allowed-signers lines and/or armored OpenPGP public keys, "
    "outside the repository, e.g. /etc/reconciler/trusted-signers.",
    **_env("TRUSTED_SIGNERS"),
)
@click.pass_context
def daemon(
    ctx: click.Context,
    repo: str,
    branch: str,
    subdir: str,
    interval: float,
    fetch_timeout: float,
    once: bool,
    allow_rewind: bool,
    allow_mass_destroy: bool,
    metrics_addr: str | None,
    coordination: str | None,
    lease_ttl: float,
    member: str,
    replica: str | None,
    verify_commits: str | None,
    trusted_signers: str | None,
) -> None:
    """Follow a git branch and reconcile on an interval (the systemd service)."""
    from reconciler.service.daemon import Daemon, DaemonSettings, Verdict
    from reconciler.service.metrics import Metrics
    from reconciler.service.systemd import Notifier, Watchdog

    refuse_libcloud_debug()
    settings = DaemonSettings(
        repo=repo, branch=branch, path=subdir, interval=interval, once=once,
        allow_rewind=allow_rewind, allow_mass_destroy=allow_mass_destroy,
        fetch_timeout=fetch_timeout, verify_commits=verify_commits,
        trusted_signers=trusted_signers,
    )  # fmt: skip
    if trusted_signers and not verify_commits:
        fail("--trusted-signers needs --verify-commits strict|head")
    notifier = Notifier.from_environ()
    if coordination:
        _coordinated_daemon(
            ctx, settings, notifier, url=coordination, ttl=lease_ttl, member=member,
            replica=replica, metrics_addr=metrics_addr,
        )  # fmt: skip
        return
    if replica:
        fail("--ledger-replica needs --coordination (the ledger follows the leader)")
    with domain_errors(), StateLock(ctx.obj["state_dir"]), open_ledger(ctx) as ledger:
        metrics = Metrics(ledger) if metrics_addr else None
        if metrics is not None and metrics_addr:
            metrics.daemon_started(interval=interval)
            metrics.serve(metrics_addr)
        runner = Daemon(
            settings, state_dir=ctx.obj["state_dir"], ledger=ledger, notifier=notifier,
            watchdog=Watchdog(notifier), observer=metrics,
            on_call=metrics.api_call if metrics else None,
        )  # fmt: skip
        if metrics is not None:
            metrics.watch_head(runner)
        runner.install_signal_handlers()
        verdict = runner.run()
    sys.exit({Verdict.OK: EXIT_OK, Verdict.REFUSED: EXIT_REFUSED}.get(verdict, EXIT_ERROR))


def _coordinated_daemon(
    ctx: click.Context,
    settings: DaemonSettings,
    notifier: Notifier,
    *,
    url: str,
    ttl: float,
    member: str,
    replica: str | None,
    metrics_addr: str | None,
) -> None:
    """One member of several under `--coordination` (reconciler.service.ha)."""
    from reconciler.service.ha import CoordinatedDaemon, CoordinationSettings
    from reconciler.service.metrics import Metrics
    from reconciler.service.systemd import Watchdog

    if settings.once:
        fail("--once cannot be used with --coordination: a member acts only while it leads")
    watchdog = Watchdog(notifier)
    if watchdog.interval is not None and watchdog.interval * 2 >= ttl:
        # The lease is renewed only while the main loop beats; systemd's watchdog must
        # restart a wedged member well before its lease would run out.
        fail(
            f"the systemd watchdog (WatchdogSec={watchdog.interval * 2:g}s) must be shorter "
            f"than --lease-ttl ({ttl:g}s): set WatchdogSec below the TTL (README: Two hosts)"
        )
    with domain_errors(), StateLock(ctx.obj["state_dir"]):
        metrics = Metrics(None) if metrics_addr else None
        runner = CoordinatedDaemon(
            settings,
            CoordinationSettings(url=url, ttl=int(ttl), member=member, replica=replica),
            state_dir=ctx.obj["state_dir"], notifier=notifier, watchdog=watchdog,
            observer=metrics, on_call=metrics.api_call if metrics else None, metrics=metrics,
        )  # fmt: skip
        if metrics is not None and metrics_addr:
            metrics.daemon_started(interval=settings.interval)
            metrics.watch_coordination(runner)
            metrics.serve(metrics_addr)
        runner.install_signal_handlers()
        runner.run()
    sys.exit(EXIT_OK)


@cli.command()
@json_option
@click.pass_context
def status(ctx: click.Context, as_json: bool) -> None:
    """Last run, each service's active and standby generations, pending drift."""
    with open_ledger(ctx) as store, domain_errors():
        document = status_document(store)
    document.update(coordination_fields(read_coordination(ctx.obj["state_dir"])))
    if as_json:
        render.print_json(document)
        return
    render.print_status(Console(), document)


def coordination_fields(seen: dict[str, Any] | None) -> dict[str, Any]:
    """DESIGN §8: role (leader, follower or single), member, epoch, lease_expires_at,
    replica_lag_seconds; a daemon under --coordination also says whom it saw leading,
    since when and why (`coordination`)."""
    if seen is None:
        return {"role": "single", "member": socket.gethostname(), "epoch": 0,
                "lease_expires_at": None, "replica_lag_seconds": None}  # fmt: skip
    return {
        "role": seen.get("role"),
        "member": seen.get("member"),
        "epoch": seen.get("epoch"),
        "lease_expires_at": seen.get("lease_expires_at"),
        "replica_lag_seconds": seen.get("replica_lag_seconds"),
        "coordination": seen,
    }


def status_document(store: Ledger) -> dict[str, Any]:
    runs = store.run_rows(limit=1)
    last = runs[0] if runs else None
    running: dict[tuple[str, str, int], int] = {}
    for row in store.instance_rows(live_only=True):
        key = (row["env"], row["service"], row["generation"])
        running[key] = running.get(key, 0) + (row["state"] == "running")
    services: dict[str, dict[str, Any]] = {}

    def entry(env: str, service: str) -> dict[str, Any]:
        return services.setdefault(
            f"{env}/{service}",
            {"env": env, "service": service, "state": "ok", "active": None, "standby": [],
             "ready": None, "ready_image": None, "image": None, "desired": None, "running": 0,
             "held": []},
        )  # fmt: skip

    for row in store.generation_rows():
        if row["state"] not in ("active", "standby", "creating", "ready"):
            continue
        item = entry(row["env"], row["service"])
        if row["state"] == "active":
            item["active"] = row["number"]
            item["image"] = row["image_id"] or row["image"]
            item["desired"] = row["count"]
            item["running"] = running.get((row["env"], row["service"], row["number"]), 0)
        elif row["state"] == "standby":
            item["standby"].append(row["number"])
        elif row["state"] == "ready":
            item["ready"] = row["number"]
            item["ready_image"] = row["image_id"] or row["image"]
    held_run = store.last_run_with_holds()
    for hold in (held_run or {}).get("held") or []:
        item = entry(hold["env"], hold["service"])
        if hold["reason"] == "waiting" and item["ready"] is None:
            continue  # switched or aborted since that pass: nothing waits any more
        item["held"].append({k: hold[k] for k in ("reason", "why", "since")})
        reasons = {h["reason"] for h in item["held"]}
        # The worst first: down, then held (pinned, failed, frozen), then waiting.
        item["state"] = (
            "down" if "down" in reasons else "held" if reasons - {"waiting"} else "waiting"
        )
    for lag in lags(store.view(), now=datetime.now(UTC)):
        behind = {k: v for k, v in lag.as_dict().items() if k not in ("env", "service")}
        entry(lag.env, lag.service).setdefault("behind", []).append(
            {**behind, "text": lag.describe()}
        )
    for item in services.values():
        item.setdefault("behind", [])
    commits = store.commit_rows(limit=20)
    newest_valid = next((c for c in commits if c["valid"]), None)
    invalid = next((c for c in commits if not c["valid"]), None)
    if (
        invalid is not None
        and newest_valid is not None
        and newest_valid["seen_at"] > invalid["seen_at"]
    ):
        invalid = None
    counts = (last or {}).get("counts") or {}
    return {
        "last_run": last,
        "held_as_of_run": (held_run or {}).get("id"),
        "requests": store.pending_request_rows(),
        "services": list(services.values()),
        "pending_drift": {
            k.removeprefix("drift:"): n for k, n in counts.items() if k.startswith("drift:")
        }
        if last and last.get("result") in ("refused", "failed", "interrupted")
        else {},
        "invalid_commit": invalid,
        "applied_commit": _applied_commit(store),
    }


def _applied_commit(store: Ledger) -> dict[str, Any] | None:
    """The last applied commit and, with --verify-commits, who signed it (DESIGN §8)."""
    sha = store.last_applied_commit()
    row = store.commit_row(sha) if sha else None
    if sha is None:
        return None
    signer = None
    if row is not None and (row.get("signer_fingerprint") or row.get("signer")):
        signer = {"key_type": row.get("signer_type"), "fingerprint": row.get("signer_fingerprint"),
                  "name": row.get("signer")}  # fmt: skip
    return {"sha": sha, "subject": (row or {}).get("subject"), "signer": signer}


wait_option = click.option(
    "--wait", default="60s", show_default=True, callback=duration_between(1, 3600),
    help="While a daemon holds the state directory: how long to wait for its answer.",
)  # fmt: skip


@cli.command()
@click.argument("env", shell_complete=complete_env)
@click.argument("service", shell_complete=complete_service)
@desired_option
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@wait_option
@click.pass_context
def rollback(
    ctx: click.Context, env: str, service: str, desired_dir: Path, yes: bool, wait: float
) -> None:
    """Switch traffic back to the standby generation and pin the service to it.

    Works while the daemon runs: the request is recorded in the ledger and the daemon
    acts on it between operations (it uses its own checkout of the desired state)."""
    from reconciler.ops import operator

    refuse_libcloud_debug()
    if not yes:
        # A rollback moves production traffic: never without a yes, and nobody can
        # answer a question on a pipe or in a script.
        if not sys.stdin.isatty():
            fail("refusing to roll back without --yes: stdin is not a terminal")
        click.confirm(f"Roll {env}/{service} back to its standby generation?", abort=True)
    act_or_request(
        ctx, "rollback", env, service, wait=wait,
        act=lambda ledger: operator.rollback(desired_dir, ledger, env, service),
    )  # fmt: skip


@cli.command()
@click.argument("env", shell_complete=complete_env)
@click.argument("service", shell_complete=complete_service)
@desired_option
@wait_option
@click.pass_context
def release(ctx: click.Context, env: str, service: str, desired_dir: Path, wait: float) -> None:
    """Drop a rollback pin: git is the truth again."""
    from reconciler.ops import operator

    act_or_request(
        ctx, "release", env, service, wait=wait,
        act=lambda ledger: operator.release(ledger, desired_dir, env, service),
    )  # fmt: skip


@cli.command()
@click.argument("env", shell_complete=complete_env)
@click.argument("service", shell_complete=complete_service)
@wait_option
@click.pass_context
def retry(ctx: click.Context, env: str, service: str, wait: float) -> None:
    """Allow a failed spec to be tried again."""
    from reconciler.ops import operator

    act_or_request(
        ctx, "retry", env, service, wait=wait,
        act=lambda ledger: operator.retry(ledger, env, service),
    )  # fmt: skip


@cli.command()
@click.argument("env", shell_complete=complete_env)
@click.argument("service", required=False, shell_complete=complete_service)
@desired_option
@wait_option
@click.pass_context
def unfreeze(
    ctx: click.Context, env: str, service: str | None, desired_dir: Path, wait: float
) -> None:
    """Lift a freeze set by a guard (the thrash detector) on ENV or one SERVICE."""
    from reconciler.ops import operator

    act_or_request(
        ctx, "unfreeze", env, service, wait=wait,
        act=lambda ledger: operator.unfreeze(ledger, desired_dir, env, service),
    )  # fmt: skip


@cli.command()
@click.argument("env", shell_complete=complete_env)
@click.argument("service", shell_complete=complete_service)
@desired_option
@wait_option
@click.pass_context
def switch(ctx: click.Context, env: str, service: str, desired_dir: Path, wait: float) -> None:
    """Move the traffic to the generation waiting `ready` (traffic.switch: manual or after
    D); the serving one becomes the standby. Works while the daemon runs."""
    from reconciler.ops import operator

    refuse_libcloud_debug()
    by = who_is_asking()
    act_or_request(
        ctx, "switch", env, service, wait=wait,
        act=lambda ledger: operator.switch(desired_dir, ledger, env, service, by=by),
    )  # fmt: skip


@cli.command()
@click.argument("env", shell_complete=complete_env)
@click.argument("service", shell_complete=complete_service)
@desired_option
@wait_option
@click.pass_context
def abort(ctx: click.Context, env: str, service: str, desired_dir: Path, wait: float) -> None:
    """Destroy the generation waiting `ready` for its switch; the serving one stays.
    Its spec is not launched again until a new commit or `reconciler retry`."""
    from reconciler.ops import operator

    refuse_libcloud_debug()
    by = who_is_asking()
    act_or_request(
        ctx, "abort", env, service, wait=wait,
        act=lambda ledger: operator.abort(desired_dir, ledger, env, service, by=by),
    )  # fmt: skip


@cli.group()
def volume() -> None:
    """A service's data volume (`volume:`): never deleted by a pass."""


@volume.command(name="delete")
@click.argument("env", shell_complete=complete_env)
@click.argument("service", shell_complete=complete_service)
@desired_option
@click.option("--yes", is_flag=True, help="Required: a deleted volume's data is gone.")
@click.pass_context
def volume_delete(ctx: click.Context, env: str, service: str, desired_dir: Path, yes: bool) -> None:
    """Delete ENV SERVICE's data volume: refused while it is attached or while the
    desired state still declares it. Its snapshots are kept."""
    from reconciler.ops.volumes import delete_volume

    refuse_libcloud_debug()
    if not yes:
        fail("refusing to delete a volume without --yes: its data cannot be brought back")
    with domain_errors(), StateLock(ctx.obj["state_dir"]), open_ledger(ctx) as ledger:
        desired = engine.read_desired(desired_dir)
        click.echo(delete_volume(desired, ledger, env, service, by=who_is_asking()))


@cli.command()
@json_option
def plugins(as_json: bool) -> None:
    """Installed health, traffic and notifier plugins (and any that failed to load)."""
    from reconciler.extensions.api import load_plugins

    found = load_plugins()
    rows = [
        {"kind": group.removeprefix("reconciler."), "name": name, "source": source,
         "status": "ok"}
        for (group, name), source in sorted(found.sources.items())
    ] + [
        {"kind": group.removeprefix("reconciler."), "name": name, "source": source,
         "status": f"failed: {error}"}
        for group, name, source, error in found.broken
    ]  # fmt: skip
    if as_json:
        render.print_json(rows)
    else:
        render.print_rows(Console(), rows, ("kind", "name", "source", "status"), title="Plugins")
    for row in rows:
        if row["status"] != "ok":
            err_console.print(f"plugin {row['name']} ({row['kind']}) {row['status']}")


@cli.command()
@click.option(
    "--port",
    type=click.IntRange(1, 65535),
    default=5000,
    show_default=True,
    help="Port on 127.0.0.1.",
)
@click.pass_context
def sandbox(ctx: click.Context, port: int) -> None:
    """Serve a local EC2-compatible endpoint (moto) for trying reconciler out."""
    from reconciler.providers.sandbox import SandboxServer

    try:
        server = SandboxServer(port, log_requests=ctx.obj["verbose"])
    except OSError as exc:
        fail(f"cannot listen on 127.0.0.1:{port}: {exc.strerror}")
    click.echo(f"sandbox EC2 endpoint on {server.endpoint} (Ctrl-C to stop)", err=True)
    # Ctrl-C (SIGINT) and SIGTERM stop it even when it was started with SIGINT ignored,
    # as every command started in the background by a non-interactive shell is.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    with suppress(KeyboardInterrupt):
        server.serve_forever()
    click.echo("sandbox stopping", err=True)
    server.stop()


@cli.command()
@desired_option
@click.option("--fast", is_flag=True, hidden=True, help="Skip the pauses between steps.")
@click.pass_context
def demo(ctx: click.Context, desired_dir: Path, fast: bool) -> None:
    """The guided tour: three passes on the built-in sandbox."""
    from reconciler.devtools.demo import run_demo
    from reconciler.logs import configure_logging

    if not ctx.obj["verbose"]:
        configure_logging(quiet=True)
    if not desired_dir.is_dir():
        fail(f"{desired_dir} not found: run the demo from the repository root")
    with domain_errors():
        code = run_demo(desired_dir, pause=0.0 if fast else 2.0)
    sys.exit(code)
