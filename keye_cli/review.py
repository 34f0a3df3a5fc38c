"""``keye review``: the LongCoT human review from a terminal, the same form the Prefect UI shows.

``keye review list`` finds flow runs paused for a ``tasks.review.ReviewForm`` (``review_mode`` ``ui`` or
``suspend``) and prints the samples each waits on; ``keye review answer RUN`` resumes one with the form's
input (reviewer + one row per sample), exactly what the UI's Resume button sends. Works against
``PREFECT_API_URL``.

What a paused run offers, and where this reads it: the form's JSON schema (input key ``...-schema``) is
pre-filled with one row per sample (id, the response to edit in place); its description (``...-description``,
``ReviewItem.to_markdown``) adds each sample's tier and question.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DECISIONS = ("approve", "edit", "reject")
#: ``### <sample id> (tier <A|B>, path agreement <x>)``, the heading ``ReviewItem.to_markdown`` writes.
HEADING = re.compile(r"^### (?P<id>\S+) \(tier (?P<tier>[A-Z]), path agreement (?P<agreement>[0-9.]+)\)$", re.M)
QUESTION = re.compile(r"\*\*Question:\*\* (?P<question>.*?)\n\n\*\*Reference:\*\*", re.S)


@dataclass(frozen=True)
class PendingSample:
    sample_id: str
    tier: str
    question: str
    response: str


@dataclass(frozen=True)
class PendingReview:
    """A flow run paused for a review form."""

    flow_run_id: str
    flow_run_name: str
    state: str
    """``Paused`` (the process waits) or ``Suspended`` (it re-runs from the top on resume)."""
    timeout_at: str | None
    samples: tuple[PendingSample, ...]


def register(subparsers: argparse._SubParsersAction) -> None:
    review = subparsers.add_parser("review", help="answer LongCoT reviews of paused flow runs (PREFECT_API_URL)")
    sub = review.add_subparsers(dest="review_command", required=True)

    p = sub.add_parser("list", help="flow runs waiting for a review, with their samples")
    p.add_argument("--json", action="store_true", help="print JSON (full responses)")
    p.set_defaults(func=list_command)

    p = sub.add_parser("answer", help="resume a paused run with your decisions")
    p.add_argument("run", help="flow run id (or its name, e.g. crimson-fox)")
    p.add_argument("--reviewer", required=True, help="your name; lineage records it with each decision")
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--approve-all", action="store_true", help="approve every sample")
    how.add_argument("--reject-all", action="store_true", help="reject every sample")
    how.add_argument(
        "--decisions",
        type=Path,
        metavar="FILE.json",
        help='{"<sample id>": "approve" | "reject" | {"decision": "edit", "edited_response": ...,'
        ' "comment": ...}}, or the form\'s list of rows',
    )
    how.add_argument(
        "--decision",
        action="append",
        metavar="SAMPLE_ID=approve|reject|edit:TEXT",
        help="one sample's decision (repeat); edit's TEXT is the full '<think>...</think> answer'",
    )
    p.add_argument(
        "--rest",
        choices=("approve", "reject"),
        default=None,
        help="decision for samples --decision/--decisions leave out (default: they must all be given)",
    )
    p.add_argument("--comment", default="", help="comment on every decision that has none")
    p.set_defaults(func=answer_command)


# ---- reading paused runs -------------------------------------------------------------------------------
def _read_input(client: Any, flow_run_id: Any, key: str) -> Any:
    from prefect.exceptions import ObjectNotFound

    try:
        raw = client.read_flow_run_input(flow_run_id, key)
    except ObjectNotFound:
        return None
    return json.loads(raw) if isinstance(raw, str) else raw


def pending_review(client: Any, flow_run: Any) -> PendingReview | None:
    """The review a paused run waits on, or None (not paused, or paused for some other input)."""
    state = flow_run.state
    if state is None or not state.is_paused() or not state.state_details.run_input_keyset:
        return None
    keyset = state.state_details.run_input_keyset
    schema = _read_input(client, flow_run.id, keyset["schema"]) or {}
    props = schema.get("properties", {})
    if not {"reviewer", "reviews"} <= set(props):
        return None
    rows = props["reviews"].get("default") or []
    description = _read_input(client, flow_run.id, keyset["description"]) or ""
    sections = {m["id"]: (m["tier"], description[m.end() :]) for m in HEADING.finditer(description)}
    samples = []
    for row in rows:
        tier, section = sections.get(row["sample_id"], ("?", ""))
        question = QUESTION.search(section)
        samples.append(
            PendingSample(
                sample_id=row["sample_id"],
                tier=tier,
                question=question["question"] if question else "",
                response=row.get("edited_response", ""),
            )
        )
    timeout = state.state_details.pause_timeout
    return PendingReview(
        flow_run_id=str(flow_run.id),
        flow_run_name=flow_run.name,
        state=state.name,
        timeout_at=timeout.isoformat() if timeout else None,
        samples=tuple(samples),
    )


def list_pending(client: Any) -> list[PendingReview]:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    runs = client.read_flow_runs(
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.PAUSED])))
    )
    return [p for p in (pending_review(client, r) for r in runs) if p is not None]


def find_run(client: Any, run: str) -> Any:
    """A flow run by id, or by name among the paused ones."""
    from uuid import UUID

    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_flow_run(UUID(run))
    except ValueError:
        named = [p for p in list_pending(client) if p.flow_run_name == run]
        if len(named) != 1:
            raise ValueError(f"{len(named)} paused flow runs named {run!r}; give the flow run id") from None
        return client.read_flow_run(UUID(named[0].flow_run_id))
    except ObjectNotFound:
        raise ValueError(f"no flow run {run} on {_api_url()}") from None


def _api_url() -> str:
    from prefect.settings import PREFECT_API_URL

    return PREFECT_API_URL.value() or "(no PREFECT_API_URL)"


def _client() -> Any:
    """A client of PREFECT_API_URL. Without it Prefect would start an empty temporary server, where no
    run ever waits: say so instead."""
    from prefect import get_client
    from prefect.settings import PREFECT_API_URL

    if not PREFECT_API_URL.value():
        raise ValueError("set PREFECT_API_URL to the server the paused run is on (e.g. http://127.0.0.1:4200/api)")
    return get_client(sync_client=True)


# ---- building the answer -------------------------------------------------------------------------------
def parse_decision(text: str) -> tuple[str, dict[str, str]]:
    """``ID=approve`` / ``ID=reject`` / ``ID=edit:<think>..</think> answer`` -> (id, form row fields)."""
    sample_id, sep, what = text.partition("=")
    decision, _, edited = what.partition(":")
    if not sep or not sample_id or decision not in DECISIONS:
        raise ValueError(f"--decision {text!r}: expected SAMPLE_ID=approve|reject|edit:TEXT")
    if decision != "edit" and edited:
        raise ValueError(f"--decision {text!r}: only edit takes ':TEXT'")
    return sample_id, {"decision": decision, "edited_response": edited}


def read_decisions_file(path: Path) -> dict[str, dict[str, str]]:
    data = json.loads(path.read_text())
    rows = data.items() if isinstance(data, dict) else ((r.get("sample_id"), r) for r in data)
    out = {}
    for sample_id, value in rows:
        row = {"decision": value} if isinstance(value, str) else dict(value)
        row.pop("sample_id", None)
        if not sample_id or row.get("decision") not in DECISIONS:
            raise ValueError(
                f"{path}: sample {sample_id!r}: decision must be one of {DECISIONS}, got {row.get('decision')!r}"
            )
        out[sample_id] = row
    return out


def build_answer(
    review: PendingReview, reviewer: str, given: dict[str, dict[str, str]], rest: str | None, comment: str = ""
) -> dict[str, Any]:
    """The form's input: every pending sample answered once, edits shaped like a response. Checked here so
    a bad answer fails in the terminal instead of failing the flow after it resumes."""
    from tasks.longcot import split_response
    from tasks.review import ReviewForm

    if not reviewer.strip():
        raise ValueError("--reviewer must be a name")
    pending = [s.sample_id for s in review.samples]
    unknown = sorted(set(given) - set(pending))
    missing = [s for s in pending if s not in given]
    if unknown:
        raise ValueError(f"flow run {review.flow_run_id} does not review {unknown}; it waits on {pending}")
    if missing and rest is None:
        raise ValueError(f"no decision for {missing} (give them, or --rest approve|reject)")
    rows = []
    for sample_id in pending:
        row = {
            "sample_id": sample_id,
            "decision": rest,
            "edited_response": "",
            "comment": "",
            **given.get(sample_id, {}),
        }
        row["comment"] = row["comment"] or comment
        if row["decision"] == "edit":
            thinking, answer = split_response(row["edited_response"])
            if not thinking or not answer:
                raise ValueError(
                    f"edit of {sample_id}: the response must be '<think>reasoning</think> answer', "
                    f"got {row['edited_response'][:80]!r}"
                )
        rows.append(row)
    answer = {"reviewer": reviewer.strip(), "reviews": rows}
    ReviewForm.model_validate(answer)  # the schema the server checks the input against
    return answer


def answer_review(
    client: Any,
    run: str,
    reviewer: str,
    given: dict[str, dict[str, str]] | None = None,
    *,
    everything: str | None = None,
    rest: str | None = None,
    comment: str = "",
) -> dict[str, Any]:
    """Resume the paused run ``run`` with these decisions (``everything``: one decision for all)."""
    from prefect.exceptions import FlowPauseTimeout
    from prefect.flow_runs import resume_flow_run

    flow_run = find_run(client, run)
    state = flow_run.state
    if state is None or not state.is_paused():
        raise ValueError(
            f"flow run {flow_run.id} ({flow_run.name}) is {state.name if state else 'without state'}, "
            "not paused for review"
        )
    review = pending_review(client, flow_run)
    if review is None:
        raise ValueError(f"flow run {flow_run.id} ({flow_run.name}) is paused but not for a review form")
    answer = build_answer(review, reviewer, given or {}, everything or rest, comment)
    try:
        resume_flow_run(flow_run.id, run_input=answer)
    except FlowPauseTimeout:
        raise ValueError(f"flow run {flow_run.id}: the review timed out; it can no longer be resumed") from None
    except RuntimeError as exc:  # the server refused the input; the run stays paused
        raise ValueError(f"flow run {flow_run.id} refused the answer: {exc}") from None
    return answer


# ---- commands ------------------------------------------------------------------------------------------
def list_command(args: argparse.Namespace) -> int:
    with _client() as client:
        pending = list_pending(client)
    if args.json:
        print(json.dumps([asdict(p) for p in pending], indent=2))
        return 0
    if not pending:
        print(f"no flow runs waiting for review on {_api_url()}")
        return 0
    for p in pending:
        print(f"{p.flow_run_id}  {p.flow_run_name}  {p.state}  until {p.timeout_at or '-'}  {len(p.samples)} sample(s)")
        for s in p.samples:
            response = " ".join(s.response.split())
            print(f"  {s.sample_id}  tier {s.tier}  Q: {s.question[:70]}\n      R: {response[:110]}")
    print("\nanswer with: keye review answer RUN_ID --reviewer NAME --decision SAMPLE_ID=approve|reject|edit:TEXT ...")
    return 0


def answer_command(args: argparse.Namespace) -> int:
    everything = "approve" if args.approve_all else "reject" if args.reject_all else None
    if args.decisions is not None:
        given = read_decisions_file(args.decisions)
    else:
        given = dict(parse_decision(d) for d in args.decision or ())
    if everything and args.rest:
        raise ValueError("--rest goes with --decision or --decisions, not --approve-all/--reject-all")
    with _client() as client:
        answer = answer_review(
            client, args.run, args.reviewer, given, everything=everything, rest=args.rest, comment=args.comment
        )
    counts = {d: sum(r["decision"] == d for r in answer["reviews"]) for d in DECISIONS}
    print(f"resumed {args.run} as {answer['reviewer']}: " + ", ".join(f"{n} {d}" for d, n in counts.items()))
    return 0
