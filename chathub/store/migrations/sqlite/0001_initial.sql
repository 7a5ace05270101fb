-- chathub schema v1 (SQLite). Applied by chathub.store.migrations inside one
-- BEGIN IMMEDIATE transaction; times are ms since the epoch; booleans are 0/1.

-- One row per (tenant, room); doubles as the per-room sequence counter. A row with
-- registered = 0 exists only as a counter (room auto-created by its first message, or
-- deleted with delete_room); get_room() does not report it.
-- Invariant: the room's messages are exactly seq in (trimmed_seq, last_seq].
CREATE TABLE rooms (
    tenant_id    INTEGER NOT NULL,
    room         TEXT    NOT NULL,
    name         TEXT,
    private      INTEGER NOT NULL DEFAULT 0,
    created_by   INTEGER,
    created_at   INTEGER,
    updated_at   INTEGER,
    registered   INTEGER NOT NULL DEFAULT 0,
    last_seq     INTEGER NOT NULL DEFAULT 0,
    trimmed_seq  INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (tenant_id, room)
);

CREATE TABLE memberships (
    tenant_id   INTEGER NOT NULL,
    room        TEXT    NOT NULL,
    user_id     INTEGER NOT NULL,
    role        TEXT    NOT NULL,
    created_at  INTEGER NOT NULL,
    updated_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, room, user_id)
);
CREATE INDEX memberships_by_user ON memberships (tenant_id, user_id);

CREATE TABLE messages (
    tenant_id      INTEGER NOT NULL,
    room           TEXT    NOT NULL,
    seq            INTEGER NOT NULL,
    msg_id         TEXT    NOT NULL,
    sender         INTEGER NOT NULL,
    text           TEXT    NOT NULL,
    reply_to       INTEGER,
    client_msg_id  TEXT,
    created_at     INTEGER NOT NULL,
    edited_at      INTEGER,
    deleted        INTEGER NOT NULL DEFAULT 0,
    deleted_at     INTEGER,
    PRIMARY KEY (tenant_id, room, seq)
);
CREATE UNIQUE INDEX messages_client_msg_id ON messages (tenant_id, room, sender, client_msg_id);
CREATE UNIQUE INDEX messages_msg_id ON messages (tenant_id, msg_id);

CREATE TABLE read_positions (
    tenant_id  INTEGER NOT NULL,
    room       TEXT    NOT NULL,
    user_id    INTEGER NOT NULL,
    seq        INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, room, user_id)
);

CREATE TABLE reactions (
    tenant_id   INTEGER NOT NULL,
    room        TEXT    NOT NULL,
    seq         INTEGER NOT NULL,
    emoji       TEXT    NOT NULL,
    user_id     INTEGER NOT NULL,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, room, seq, emoji, user_id)
);

CREATE TABLE sanctions (
    tenant_id   INTEGER NOT NULL,
    room        TEXT    NOT NULL,
    kind        TEXT    NOT NULL CHECK (kind IN ('ban', 'mute')),
    user_id     INTEGER NOT NULL,
    until       INTEGER,
    reason      TEXT,
    created_at  INTEGER NOT NULL,
    PRIMARY KEY (tenant_id, room, kind, user_id)
);

CREATE TABLE audit_log (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  INTEGER NOT NULL,
    room       TEXT    NOT NULL,
    actor      INTEGER NOT NULL,
    action     TEXT    NOT NULL,
    target     INTEGER,
    reason     TEXT,
    ts         INTEGER NOT NULL
);
CREATE INDEX audit_log_by_room ON audit_log (tenant_id, room, id);
