-- chathub schema v1 (PostgreSQL). Applied by chathub.store.migrations inside one
-- transaction that holds the migration advisory lock; times are ms since the epoch.

-- One row per (tenant, room). The row doubles as the per-room sequence counter:
-- appends lock it (INSERT .. ON CONFLICT DO UPDATE SET last_seq = last_seq + n), which
-- serialises seq allocation across every hub process writing to this database.
-- A row with registered = FALSE exists only as a counter (room auto-created by its
-- first message, or deleted with delete_room); get_room() does not report it.
-- Invariant: the room's messages are exactly seq in (trimmed_seq, last_seq].
CREATE TABLE rooms (
    tenant_id    BIGINT  NOT NULL,
    room         TEXT    NOT NULL,               -- the room key used on the wire
    name         TEXT,                           -- display name
    private      BOOLEAN NOT NULL DEFAULT FALSE,
    created_by   BIGINT,
    created_at   BIGINT,
    updated_at   BIGINT,
    registered   BOOLEAN NOT NULL DEFAULT FALSE,
    last_seq     BIGINT  NOT NULL DEFAULT 0,
    trimmed_seq  BIGINT  NOT NULL DEFAULT 0,     -- seq <= trimmed_seq removed (retention, delete_room)
    PRIMARY KEY (tenant_id, room)
) WITH (fillfactor = 70);                        -- room for HOT updates of last_seq

CREATE TABLE memberships (
    tenant_id   BIGINT NOT NULL,
    room        TEXT   NOT NULL,
    user_id     BIGINT NOT NULL,
    role        TEXT   NOT NULL,                 -- owner | moderator | member
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, room, user_id)
);
CREATE INDEX memberships_by_user ON memberships (tenant_id, user_id);

CREATE TABLE messages (
    tenant_id      BIGINT  NOT NULL,
    room           TEXT    NOT NULL,
    seq            BIGINT  NOT NULL,
    msg_id         TEXT    NOT NULL,
    sender         BIGINT  NOT NULL,
    text           TEXT    NOT NULL,
    reply_to       BIGINT,
    client_msg_id  TEXT,
    created_at     BIGINT  NOT NULL,
    edited_at      BIGINT,
    deleted        BOOLEAN NOT NULL DEFAULT FALSE,
    deleted_at     BIGINT,
    PRIMARY KEY (tenant_id, room, seq)
);
-- Idempotent appends: one message per (tenant, room, sender, client_msg_id).
-- NULL client_msg_ids never collide (NULLs are distinct in unique indexes).
CREATE UNIQUE INDEX messages_client_msg_id ON messages (tenant_id, room, sender, client_msg_id);
-- The hub's message id; also makes a retried append with the same msg_id idempotent.
CREATE UNIQUE INDEX messages_msg_id ON messages (tenant_id, msg_id);

CREATE TABLE read_positions (
    tenant_id  BIGINT NOT NULL,
    room       TEXT   NOT NULL,
    user_id    BIGINT NOT NULL,
    seq        BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, room, user_id)
);

CREATE TABLE reactions (
    tenant_id   BIGINT NOT NULL,
    room        TEXT   NOT NULL,
    seq         BIGINT NOT NULL,
    emoji       TEXT   NOT NULL,
    user_id     BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, room, seq, emoji, user_id)
);

CREATE TABLE sanctions (
    tenant_id   BIGINT NOT NULL,
    room        TEXT   NOT NULL,
    kind        TEXT   NOT NULL CHECK (kind IN ('ban', 'mute')),
    user_id     BIGINT NOT NULL,
    until       BIGINT,                          -- NULL = indefinite
    reason      TEXT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant_id, room, kind, user_id)
);

CREATE TABLE audit_log (
    id         BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id  BIGINT NOT NULL,
    room       TEXT   NOT NULL,
    actor      BIGINT NOT NULL,
    action     TEXT   NOT NULL,
    target     BIGINT,
    reason     TEXT,
    ts         BIGINT NOT NULL
);
CREATE INDEX audit_log_by_room ON audit_log (tenant_id, room, id);
