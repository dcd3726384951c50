-- 0001_init.sql — the tscale schema (SPEC §6). Applied by ts_store_open() in one
-- transaction, which also sets PRAGMA application_id (marks the file as tscale's) and
-- PRAGMA user_version (the schema version).
--
-- models    a name the daemon serves; active models are loaded at start
-- weights   the immutable parts of a model (architecture, T_packed, E, bias), stored once
--           per distinct content however many versions or names share it
-- versions  version N of a model name: which weights, and which model file it came from
-- snapshots the mutable state (corr_accum, step) of one version at one step
--
-- Integers are SQLite's 64-bit signed; 64-bit hashes are stored as their two's-complement
-- value. Blobs are little-endian: bias int32[rows], state int64[state_len].

CREATE TABLE models (
    id              INTEGER PRIMARY KEY,
    name            TEXT    NOT NULL UNIQUE,
    active          INTEGER NOT NULL DEFAULT 1 CHECK (active IN (0, 1)),
    current_version INTEGER,                    -- versions.number last put for this name
    created_at      INTEGER NOT NULL,           -- Unix ms
    updated_at      INTEGER NOT NULL
);

CREATE TABLE weights (
    id           INTEGER PRIMARY KEY,
    content_hash INTEGER NOT NULL,  -- hash of architecture + immutable blobs: a lookup key
                                    -- only; reuse is decided by comparing the bytes
    n_layers     INTEGER NOT NULL CHECK (n_layers >= 1),
    state_len    INTEGER NOT NULL CHECK (state_len >= 0), -- int64 values in a snapshot
    bytes        INTEGER NOT NULL,  -- total bytes of the layer blobs
    created_at   INTEGER NOT NULL
);
CREATE INDEX weights_by_hash ON weights (content_hash);

CREATE TABLE weight_layers (
    id         INTEGER PRIMARY KEY,
    weights_id INTEGER NOT NULL REFERENCES weights (id),
    idx        INTEGER NOT NULL CHECK (idx >= 0),   -- position in the sequential model
    kind       TEXT    NOT NULL,  -- ternary_linear, ternary_rmsnorm, relu, silu, gelu
    in_dim     INTEGER NOT NULL,
    out_dim    INTEGER NOT NULL,
    group_size INTEGER NOT NULL,  -- 0 for activations
    has_bias   INTEGER NOT NULL CHECK (has_bias IN (0, 1)),
    t_pad      INTEGER NOT NULL,  -- pad digits in the last T_packed byte
    t_packed   BLOB,              -- ceil(rows·cols/5) bytes; NULL for activations
    e          BLOB,              -- int8[G]; NULL for activations
    bias       BLOB,              -- int32[rows]; NULL without bias
    UNIQUE (weights_id, idx)
);

CREATE TABLE versions (
    id         INTEGER PRIMARY KEY,
    model_id   INTEGER NOT NULL REFERENCES models (id),
    number     INTEGER NOT NULL CHECK (number >= 1),
    weights_id INTEGER NOT NULL REFERENCES weights (id),
    file_hash  INTEGER NOT NULL,  -- identifies the model file this version came from
    created_at INTEGER NOT NULL,
    UNIQUE (model_id, number)
);

CREATE TABLE snapshots (
    -- AUTOINCREMENT: ids are never reused after retention deletes old rows, so an id a
    -- client saw in a listing never names a different snapshot later.
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    model_id   INTEGER NOT NULL REFERENCES models (id),
    version_id INTEGER NOT NULL REFERENCES versions (id),
    step       INTEGER NOT NULL,
    created_at INTEGER NOT NULL,  -- Unix ms
    reason     TEXT    NOT NULL,  -- timer, admin, import, shutdown, restore
    state      BLOB    NOT NULL,  -- int64[state_len] as ts_state_save writes it
    checksum   INTEGER NOT NULL,  -- FNV-1a 64 of state, one step per int64 value
    bytes      INTEGER NOT NULL   -- length of state
);
