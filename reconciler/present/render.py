"""Rendering for people and machines: plans, apply results and ledger rows.

Owns: turning value objects and ledger rows into rich tables and JSON documents.
Must not: compute anything the planner or ledger already knows.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table

from reconciler.apply.run import ApplyResult
from reconciler.model import Action, ActionKind, Plan
from reconciler.planning.costs import HOURS_PER_MONTH, PlanCosts
from reconciler.present.formatting import human_time, money
from reconciler.present.terminal import shown

_SYMBOL = {
    ActionKind.CREATE: "+",
    ActionKind.DESTROY: "-",
    ActionKind.ACTIVATE: "*",
    ActionKind.RETIRE: "x",
    ActionKind.ADOPT: "=",
    ActionKind.PREPARE: "~",
    ActionKind.CHECK: "?",
    ActionKind.HANDOVER: ">",
}


def action_to_json(action: Action) -> dict[str, Any]:
    return {
        "kind": action.kind.value,
        "reason": action.reason.value,
        "env": action.env,
        "service": action.service,
        "generation": action.generation,
        "provider": action.provider,
        "slot": action.slot,
        "instance": action.instance_id,
        "replaces": action.replaces,
        "previous": action.previous,
        "detail": action.detail,
    }


def plan_summary(plan: Plan) -> dict[str, int]:
    return {kind.value: plan.count(kind) for kind in ActionKind}


def plan_to_json(
    plan: Plan, *, commit: str | None, guards: Sequence[str], costs: PlanCosts | None = None
) -> dict[str, Any]:
    document: dict[str, Any] = {
        "commit": commit,
        "changes": not plan.empty,
        "summary": plan_summary(plan),
        "actions": [action_to_json(a) for a in plan.actions],
        "notes": [{"env": n.env, "service": n.service, "message": n.message} for n in plan.notes],
        "held": [hold.as_dict() for hold in plan.held],
        "refused_by_guards": list(guards),
    }
    if costs is not None:
        for entry, monthly, overlap in zip(
            document["actions"], costs.monthly, costs.overlap, strict=True
        ):
            entry["monthly_cost_delta"] = round(monthly, 4)
            entry["overlap_cost"] = round(overlap, 4)
        document["monthly_cost_delta"] = costs.monthly_cost_delta
        document["overlap_cost"] = costs.overlap_cost
        document["unpriced"] = list(costs.unpriced)
    return document


def _action_cost(costs: PlanCosts | None, index: int) -> str:
    if costs is None:
        return ""
    parts = []
    if costs.monthly[index]:
        parts.append(f"{money(costs.monthly[index], signed=True)}/month")
    if costs.overlap[index]:
        parts.append(f"overlap {money(costs.overlap[index])}")
    return f" ({', '.join(parts)})" if parts else ""


def print_plan(
    console: Console,
    plan: Plan,
    *,
    commit: str | None,
    costs: PlanCosts | None = None,
    uncommitted: int | None = None,
) -> None:
    header = f"desired state at {commit[:12]}" if commit else "desired state (not a git checkout)"
    if uncommitted:
        header += f" with {uncommitted} uncommitted change(s): not what the daemon applies"
    console.print(f"[bold]Plan[/bold] for {shown(header)}")
    if plan.empty and not plan.held:
        console.print("No changes: the cloud matches the desired state.")
    elif plan.empty:
        console.print(
            f"No changes to apply, but {len(plan.held)} held: the cloud does not match "
            "the desired state (see Held below)."
        )
    # Each action's place in the plan (its cost's index), found once: `actions.index()`
    # per action made printing a plan of thousands of actions quadratic.
    position = {id(action): n for n, action in enumerate(plan.actions)}
    for (env, service), actions in plan.by_service().items():
        console.print(f"  [bold]{shown(env)}/{shown(service)}[/bold]")
        for action in actions:
            detail = f" - {action.detail}" if action.detail else ""
            price = _action_cost(costs, position[id(action)])
            console.print(shown(f"    {_SYMBOL[action.kind]} {action.describe()}{detail}{price}"))
    for note in plan.notes:
        where = f"{note.env}/{note.service}: " if note.env else ""
        console.print(shown(f"  ! {where}{note.message}"))
    print_holds(console, [hold.as_dict() for hold in plan.held])
    summary = ", ".join(f"{n} {k}" for k, n in plan_summary(plan).items() if n)
    if summary:
        console.print(f"Summary: {summary}")
    if costs is not None and not plan.empty:
        line = (
            f"Cost: {money(costs.monthly_cost_delta, signed=True)}/month "
            f"({HOURS_PER_MONTH:g} h), overlap {money(costs.overlap_cost)} one-off"
        )
        if costs.unpriced:
            line += f"; no price known for {', '.join(costs.unpriced)}"
        console.print(shown(line))


def print_lags(console: Console, lines: Sequence[str]) -> None:
    """Which environment runs behind which (what `reconciler promote` would move)."""
    for line in lines:
        console.print(shown(f"Behind: {line}"), highlight=False)


_HOLD_STYLE = {
    "down": "bold red", "failed": "red", "frozen": "yellow", "pinned": "yellow", "waiting": "cyan",
}  # fmt: skip


def print_holds(console: Console, holds: Sequence[Mapping[str, Any]]) -> None:
    """Each held service: what holds it, since when, and why (what lifts it)."""
    if not holds:
        return
    console.print("[bold]Held[/bold] (drift that is not being acted on):")
    for hold in holds:
        since = f" since {human_time(hold['since'])}" if hold.get("since") else ""
        style = _HOLD_STYLE.get(str(hold["reason"]), "bold")
        console.print(
            f"  [{style}]{shown(str(hold['reason']).upper())}[/{style}] "
            f"{shown(hold['env'])}/{shown(hold['service'])}{shown(since)}: {shown(hold['why'])}",
            highlight=False,
        )


def apply_summary(run: int | None, result_name: str | None, result: ApplyResult) -> str:
    """The last line of `apply`: what happened, and what failed when something did."""
    done = ", ".join(f"{n} {k}" for k, n in sorted(result.counts.items()))
    if result.failures:
        what = f"{len(result.failures)} service(s) failed"
        return f"Apply failed (run {run}): {what}" + (f"; done: {done}" if done else "")
    if result.interrupted:
        return f"Apply interrupted (run {run}): {done or 'nothing done yet'}; the next pass resumes"
    if result_name == "no-op":
        return f"Applied (run {run}): nothing to do"
    return f"Applied (run {run}): {done or 'nothing to do'}"


def print_json(document: Any) -> None:
    # Valid JSON only: a float that is not finite (an unbounded ratio, an absurd price
    # from a provider) is written as null, never as the `Infinity` JSON does not have.
    print(json.dumps(finite(document), indent=2, sort_keys=True, default=str, allow_nan=False))


def finite(value: Any) -> Any:
    """`value` with every non-finite float replaced by None, through dicts and lists."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, Mapping):
        return {k: finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite(v) for v in value]
    return value


def print_rows(
    console: Console, rows: Sequence[Mapping[str, Any]], columns: Iterable[str], *, title: str
) -> None:
    columns = list(columns)
    table = Table(
        title=title, box=box.SIMPLE_HEAD, expand=False, padding=0, pad_edge=False, show_edge=False
    )
    for column in columns:
        # Free text wraps; a time wraps between its date and its hour; ids and states
        # stay whole. At 80 columns every column stays, none is cut short.
        wrap = column in ("reason", "detail", "why") or column in TIME_COLUMNS
        table.add_column(
            column.removesuffix("_at"),
            overflow="fold",
            no_wrap=not wrap,
            min_width=10 if wrap else None,
        )
    for row in rows:
        table.add_row(*[shown(_cell(row.get(column))) for column in columns])
    console.print(table)
    if not rows:
        console.print("(nothing recorded yet)")


def compact_generation_rows(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Ledger generation rows folded into the few columns an 80-column terminal holds."""
    return [
        {
            "generation": f"{row['env']}/{row['service']} g{row['number']}",
            "state": row["state"],
            "image": row["image"],
            "commit": (row.get("commit") or "")[:7] or None,
            "created": row.get("created_at"),
            "ended": row.get("destroyed_at") or row.get("retired_at"),
            "reason": row.get("reason"),
        }
        for row in rows
    ]


TIME_COLUMNS = frozenset(
    {
        "created",
        "ended",
        "at",
        "created_at",
        "started_at",
        "finished_at",
        "destroyed_at",
        "activated_at",
        "retired_at",
        "since",
    }
)
STATUS_COLUMNS = ("service", "state", "image", "running", "active", "standby", "ready")
COMPACT_COLUMNS = ("generation", "state", "image", "commit", "created", "ended", "reason")


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    text = str(value)
    # Timestamps: to the minute in UTC, with the year and the zone; JSON keeps the full value.
    if len(text) >= 19 and text[4] == "-" and text[10] == "T":
        return human_time(text)
    if len(text) == 40 and all(c in "0123456789abcdef" for c in text):
        return text[:10]
    return text


def print_phrases(console: Console, phrases: Sequence[str], *, indent: str = "  ") -> None:
    """Phrases joined by spaces, wrapped between phrases only: at 80 columns a line
    breaks before "commit 0123456789", never inside it."""
    line = ""
    for phrase in phrases:
        if line and len(line) + 1 + len(phrase) > console.width:
            console.print(shown(line), overflow="fold")
            line = indent + phrase
        else:
            line = f"{line} {phrase}" if line else phrase
    if line:
        console.print(shown(line), overflow="fold")


def print_status(console: Console, document: Mapping[str, Any]) -> None:
    coordination = document.get("coordination")
    if coordination:
        if coordination.get("role") == "leader":
            role = (f"leader (epoch {coordination.get('epoch')}, lease confirmed until "
                    f"{_cell(coordination.get('lease_expires_at'))})")  # fmt: skip
        else:
            leader = coordination.get("leader") or "none seen"
            role = f"follower (leader {leader}, epoch {coordination.get('epoch')})"
        console.print(shown(
            f"Member {coordination.get('member')}: {role} since "
            f"{_cell(coordination.get('since'))}: {coordination.get('why')}"
        ))  # fmt: skip
    last = document.get("last_run")
    if last:
        counts = [
            f"{n} {k}" for k, n in sorted(last["counts"].items()) if not k.startswith("drift:")
        ]
        print_phrases(
            console,
            [
                f"Last run {last['id']} ({last['command']}): {last['result'] or 'running'}",
                f"at {_cell(last['started_at'])},",
                f"commit {_cell(last['commit'])}" + (" -" if counts else ""),
                *(f"{c}," for c in counts[:-1]),
                *counts[-1:],
            ],
        )
        if last.get("error"):
            console.print(shown(f"  error: {last['error']}"))
    else:
        console.print("No run recorded yet.")
    services = document.get("services", [])
    rows = [
        {
            "service": f"{s['env']}/{s['service']}",
            "state": s["state"] + (f" ({', '.join(h['reason'] for h in s['held'])})"
                                   if s["state"] == "held" else ""),
            "image": s.get("image"),
            "running": f"{s.get('running', 0)}/{s['desired']}" if s.get("desired") is not None
            else "0",
            "active": f"g{s['active']}" if s["active"] is not None else None,
            "standby": ", ".join(f"g{n}" for n in s["standby"]) or None,
            "ready": f"g{s['ready']}" if s.get("ready") is not None else None,
        }
        for s in services
    ]  # fmt: skip
    if rows:
        print_rows(console, rows, STATUS_COLUMNS, title="Services")
    holds = [
        {"env": s["env"], "service": s["service"], **hold}
        for s in services for hold in s.get("held", [])
    ]  # fmt: skip
    print_holds(console, holds)
    print_lags(console, [lag["text"] for s in services for lag in s.get("behind", [])])
    for request in document.get("requests") or []:
        target = "/".join(x for x in (request["env"], request["service"]) if x)
        console.print(shown(
            f"Request {request['id']} ({request['kind']} {target}) by {request['requested_by']} "
            f"at {human_time(request['at'])}: {request['state']}"
        ), highlight=False)  # fmt: skip
    drift = document.get("pending_drift") or {}
    if drift:
        console.print(shown("Pending drift: " + ", ".join(f"{n} {k}" for k, n in drift.items())))
    applied = document.get("applied_commit")
    if applied and applied.get("signer"):
        signer = applied["signer"]
        console.print(shown(
            f"Applied commit {applied['sha'][:12]} signed by {signer.get('name') or '?'} "
            f"({signer.get('key_type') or 'accepted by hand'} {signer.get('fingerprint') or ''})"
        ))  # fmt: skip
    invalid = document.get("invalid_commit")
    if invalid:
        console.print(
            shown(f"Invalid commit {invalid['sha'][:12]} ({invalid['subject']}) not applied:")
        )
        for problem in invalid.get("errors") or []:
            console.print(shown(f"  {problem}"))
