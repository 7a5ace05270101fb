-- The idempotency index keeps its uniqueness, (tenant, room, sender, client_msg_id), but
-- orders its columns (tenant, room, client_msg_id, sender). Uniqueness and the equality
-- lookups are the same; what changes is where a group commit's inserts land. Keyed by
-- sender first, a group of N messages from N senders touches N leaf pages (one per
-- sender), so each commit writes about one index page per message to the WAL. Keyed by
-- client_msg_id first, time-ordered ids (counters, ULIDs, UUIDv7, timestamps) of one
-- moment sort together and a group touches a few pages per room; random ids (UUIDv4)
-- scatter either way.
DROP INDEX messages_client_msg_id;
CREATE UNIQUE INDEX messages_client_msg_id ON messages (tenant_id, room, client_msg_id, sender);
