"""The state machines of the bookkeeping, each owned by one module: `requests`, `files`,
`edges`, `notifications`. Nothing else writes a `status` column (`tests/common/
test_state_owners.py` checks the sources).

Each owner declares its states' transitions as a table (`Transition`: the states it leaves
from, the state it goes to) and one function per transition, a compare-and-set
(`UPDATE .. WHERE id = .. AND status IN (from) .. RETURNING`) that says whether it happened;
the history entry, outbox event and metric the transition makes are made there too.

Lock order, so that no two transactions wait on each other: edge rows (in name order), then
request rows (in id order), then file rows. Every file transition locks its request's row
first (`requests.lock`); a claim that locks both (`files.claim_pending`) skips what is locked
rather than waiting.
"""
