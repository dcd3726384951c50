-- 0003_journal.sql — the feedback journal (SPEC §6): every feedback step that is answered
-- 200 is first committed here, so a restart recovers it (newest intact snapshot + the
-- journal entries after it, in order).
--
-- journal      one feedback step's integer effect: for each ternary_linear layer of the
--              model, its per-group score (corr_accum -= score) — every such layer's step
--              advances by one. Rows are written by group commit (one transaction for every
--              step that finished while the previous commit was in flight) and deleted once
--              the second-newest snapshot of the model covers them, so the journal holds
--              about one to two snapshot intervals of steps.
-- feedback_ids the answer given to a feedback request that carried an OIP id, for
--              exactly-once: a repeat within the id window (--feedback-id-window) answers
--              this again. Written in the same transaction as the step; rows older than the
--              window are deleted as new ones are written.
-- snapshots.journal_seq: every journal entry with seq <= this is already in the snapshot's
--              state (entries of any model; the sequence is global).

CREATE TABLE journal (
    seq        INTEGER PRIMARY KEY,              -- global order of entries (never reused)
    model_id   INTEGER NOT NULL REFERENCES models (id),
    version    INTEGER NOT NULL,                 -- versions.number the step applied to
    step       INTEGER NOT NULL,                 -- the model's step after this entry
    created_at INTEGER NOT NULL,                 -- Unix ms
    payload    BLOB    NOT NULL,                 -- encoded scores (server/store/journal.c)
    checksum   INTEGER NOT NULL                  -- FNV-1a 64 of seq, version, step, payload
);
-- No index on model_id: the journal holds one or two snapshot intervals, and its readers
-- (replay, pruning) take a range of seq, the rowid. Each index is one more page per commit.

CREATE TABLE feedback_ids (
    model_id   INTEGER NOT NULL REFERENCES models (id),
    request_id TEXT    NOT NULL,
    body_hash  INTEGER NOT NULL,                 -- hash of the request's tensors: same id,
                                                 -- other body is a 409
    seq        INTEGER NOT NULL,                 -- the journal entry of the step
    answer     TEXT    NOT NULL,                 -- the JSON body answered
    created_at INTEGER NOT NULL,                 -- Unix ms
    PRIMARY KEY (model_id, request_id)
) WITHOUT ROWID;                                 -- one b-tree, not a table plus its key index
CREATE INDEX feedback_ids_by_time ON feedback_ids (created_at);

ALTER TABLE snapshots ADD COLUMN journal_seq INTEGER NOT NULL DEFAULT 0;
