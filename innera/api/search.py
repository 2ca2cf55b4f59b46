"""``/v1/search``: find the signed-in user's entries by words (see ``innera/journal/search.py``
for the matching rules, the scan and the snippet)."""

from __future__ import annotations

import time

from pydantic import Field
from quart import Blueprint, g

from innera.api.context import services
from innera.api.entries import EntryOut, entry_out
from innera.api.operation import KEY_SERVICE_UNAVAILABLE, operation
from innera.api.schemas import Cursor, Model, NextCursor, QueryInt
from innera.errors import AppError, ValidationFailed
from innera.journal.search import parse_terms, search_entries, snippets

blueprint = Blueprint("search", __name__, url_prefix="/v1/search")

SEARCH_PURPOSE = "search"


class SearchInProgress(AppError):
    """The account already has a search running in this process (one at a time each)."""

    status, code = 429, "search_in_progress"
    message = ("Another search of this account is still running; retry when it has "
               "finished")

    def __init__(self) -> None:
        super().__init__(headers={"Retry-After": "1"})


class SearchQuery(Model):
    q: str = Field(min_length=1, max_length=200,
                   description="Whitespace-separated terms; an entry must contain them all. "
                               "Needs a character other than whitespace and combining marks "
                               "(else 422)")
    limit: QueryInt = Field(20, ge=1, le=100)
    cursor: Cursor = None


class SearchHit(Model):
    entry: EntryOut
    snippet: str = Field(description="~120 characters of the body around the first match")


class SearchOut(Model):
    items: list[SearchHit]
    scanned: int = Field(description="Entries read by this scan")
    complete: bool = Field(description="False when the time limit cut the scan short")
    nextCursor: NextCursor = Field(
        description="Opaque: pass it as `?cursor=` (with the same `q`) to continue the scan "
                    "after the last entry read (when it stopped at `limit` matches or at the "
                    "time limit); null when every entry was read")


@operation(blueprint, "GET", "", operation_id="searchEntries",
           summary="Search entries, newest first", query=SearchQuery, response=SearchOut,
           errors={422: "`validation_failed`: `q` has no searchable term (only whitespace "
                        "or combining marks)",
                   429: "`search_in_progress`: another search of this account is running "
                        "(Retry-After: 1)",
                   503: KEY_SERVICE_UNAVAILABLE},
           description="Case- and accent-insensitive; every term must match the title, the "
                       "body or a tag. The scan is bounded by SEARCH_TIMEOUT_S: past it, the "
                       "matches so far come back with `complete: false`. One search at a "
                       "time per account: while one runs, another answers 429 "
                       "`search_in_progress` (see Retry-After).")
async def search(query: SearchQuery) -> SearchOut:
    svc = services()
    terms = parse_terms(query.q)
    if not terms:
        raise ValidationFailed(details=[{"field": "q", "type": "value_error",
                                         "message": "the query has no searchable term"}])
    codec = svc.cursors
    after = (codec.decode(SEARCH_PURPOSE, g.user_id, query.cursor)
             if query.cursor is not None else None)
    if g.user_id in svc.searching:
        raise SearchInProgress()
    svc.searching.add(g.user_id)
    started = time.perf_counter()
    try:
        result = await search_entries(svc.db, svc.entry_cipher, g.user_id, terms,
                                      limit=query.limit,
                                      timeout_s=svc.settings.limits.search_timeout_s,
                                      after=after)
        # up to 100 bodies of up to 100,000 characters: off the loop, like the scan
        texts = await snippets([entry.body for entry in result.entries], terms)
        items = [SearchHit(entry=entry_out(entry), snippet=text)
                 for entry, text in zip(result.entries, texts, strict=True)]
        return SearchOut(
            items=items, scanned=result.scanned, complete=result.complete,
            nextCursor=(codec.encode(SEARCH_PURPOSE, g.user_id, result.next_position)
                        if result.next_position is not None else None))
    finally:
        svc.searching.discard(g.user_id)
        svc.metrics.search_duration.observe(time.perf_counter() - started)
