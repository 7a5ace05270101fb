"""Model-based check: random operation sequences (fixed seeds, so deterministic) against
a tiny in-memory model of the documented behaviour, for every store implementation."""

from __future__ import annotations

import asyncio
import random

import pytest

from chathub.store import NewMessage, NotFound
from chathub.store._common import MAX_PAGE

KEEP = 15  # retention_max_per_room of the store under test


class Model:
    def __init__(self) -> None:
        self.msgs: dict[tuple, dict[int, dict]] = {}  # (t, r) -> seq -> message fields
        self.last: dict[tuple, int] = {}
        self.trimmed: dict[tuple, int] = {}
        self.keys: dict[tuple, int] = {}  # (t, r, sender, cid) -> seq
        self.read: dict[tuple, int] = {}

    def append(self, m: NewMessage) -> tuple[int, bool]:
        k = (m.tenant_id, m.room)
        if m.client_msg_id is not None:
            key = (*k, m.sender, m.client_msg_id)
            if key in self.keys and self.keys[key] in self.msgs.get(k, {}):
                return self.keys[key], True
        seq = self.last.get(k, 0) + 1
        self.last[k] = seq
        self.msgs.setdefault(k, {})[seq] = {"text": m.text, "deleted": False, "edited_at": None,
                                            "msg_id": m.msg_id}
        if m.client_msg_id is not None:
            self.keys[(*k, m.sender, m.client_msg_id)] = seq
        return seq, False

    def retain(self) -> int:
        n = 0
        for k, last in self.last.items():
            bound = last - KEEP
            if bound > self.trimmed.get(k, 0):
                for s in [s for s in self.msgs[k] if s <= bound]:
                    del self.msgs[k][s]
                    n += 1
                self.trimmed[k] = bound
        return n

    def page(self, k, before, after, limit):
        seqs = sorted(self.msgs.get(k, {}))
        if after is not None:
            sel = [s for s in seqs if s > after and (before is None or s < before)]
            return sel[:limit], len(sel) > limit
        sel = [s for s in seqs if before is None or s < before]
        return sel[-limit:] if limit else [], len(sel) > limit


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_random_operations_match_model(store_factory, run, seed):
    rnd = random.Random(seed)

    async def body():
        store = await store_factory(retention_max_per_room=KEEP)
        model = Model()
        rooms = [(1, "a"), (1, "b"), (2, "a"), (3, "long room name ✓")]
        n = 0
        for step in range(250):
            op = rnd.random()
            t, r = rnd.choice(rooms)
            k = (t, r)
            if op < 0.45:
                # a burst of appends in flight together (group commit), some retried
                burst = []
                for _ in range(rnd.randint(1, 12)):
                    n += 1
                    cid = rnd.choice([None, f"c{rnd.randint(0, 40)}"])
                    tt, rr = rnd.choice(rooms) if rnd.random() < 0.3 else (t, r)
                    burst.append(NewMessage(tt, rr, rnd.randint(1, 3), f"t{n}", 1000 + n, f"id{n}", cid))
                res = await asyncio.gather(*(store.append(m) for m in burst))
                for m, got in zip(burst, res):
                    want_seq, want_dup = model.append(m)
                    assert (got.message.seq, got.duplicate) == (want_seq, want_dup), (step, m)
            elif op < 0.55 and model.msgs.get(k):
                seq = rnd.choice(list(model.msgs[k]) + [model.last[k] + 1])
                alive = seq in model.msgs[k] and not model.msgs[k][seq]["deleted"]
                if alive:
                    got = await store.edit(t, r, seq, f"e{step}", step)
                    model.msgs[k][seq].update(text=f"e{step}", edited_at=step)
                    assert got.text == f"e{step}"
                else:
                    with pytest.raises(NotFound):
                        await store.edit(t, r, seq, "x", step)
            elif op < 0.62 and model.msgs.get(k):
                seq = rnd.choice(list(model.msgs[k]))
                got = await store.delete(t, r, seq, step)
                model.msgs[k][seq].update(text="", deleted=True)
                assert got.deleted and got.seq == seq
            elif op < 0.80:
                before = rnd.choice([None, rnd.randint(0, model.last.get(k, 0) + 3)])
                after = rnd.choice([None, None, rnd.randint(0, model.last.get(k, 0) + 3)])
                limit = rnd.choice([0, 1, 3, 7, 50])
                page = await store.history(t, r, before_seq=before, after_seq=after, limit=limit)
                want, more = model.page(k, before, after, limit)
                assert [m.seq for m in page.messages] == want, (step, before, after, limit)
                assert page.has_more == more, (step, before, after, limit)
                for m in page.messages:
                    mm = model.msgs[k][m.seq]
                    assert (m.text, m.deleted, m.edited_at, m.msg_id) == (
                        mm["text"], mm["deleted"], mm["edited_at"], mm["msg_id"])
            elif op < 0.88:
                since = rnd.randint(0, model.last.get(k, 0) + 2)
                rp = await store.replay(t, r, since, 5)
                seqs = sorted(s for s in model.msgs.get(k, {}) if s > since)[:5]
                assert [m.seq for m in rp.messages] == seqs
                assert rp.complete == (since >= model.trimmed.get(k, 0))
                assert rp.last_seq == model.last.get(k, 0)
            elif op < 0.95:
                user = rnd.randint(1, 3)
                seq = rnd.randint(-1, model.last.get(k, 0) + 5)
                pos = max(model.read.get((*k, user), 0), max(0, min(seq, model.last.get(k, 0))))
                model.read[(*k, user)] = pos
                assert await store.set_read(t, r, user, seq) == pos
                unread = sum(1 for s, mm in model.msgs.get(k, {}).items() if s > pos and not mm["deleted"])
                assert await store.unread_count(t, r, user) == unread
            else:
                assert await store.apply_retention(10**13) == model.retain()
        for t, r in rooms:
            assert await store.last_seq(t, r) == model.last.get((t, r), 0)
            page = await store.history(t, r, after_seq=0, limit=MAX_PAGE)
            assert [m.seq for m in page.messages] == sorted(model.msgs.get((t, r), {}))

    run(body())
