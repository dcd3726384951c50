-- 0005_feedback_ids_by_seq.sql — exactly-once records keyed by their journal entry.
--
-- Why: a group commit wrote each id into two b-trees (the (model_id, request_id) key and
-- the created_at index), at places that depend on the id's text, so a commit of a few
-- steps dirtied about 8 pages (measured: 7.8 WAL frames per commit, 16 clients, demo
-- model). Nothing looks an id up in the database while the daemon runs — the records are
-- loaded into memory at start (server/engine/idem.h) — so the table needs no key but the
-- order it is written in: seq (every step has at most one id). Rows are appended at the
-- end of one b-tree, expired from its start (created_at grows with seq), and a commit
-- dirties the journal's last page and this table's last page.
--
-- A repeat of (model_id, request_id) is answered from memory while the daemon remembers the
-- id. Once --feedback-id-bytes made it forget the id early, a repeat is a new step and a second
-- row names the id: the one with the higher seq wins at load.

CREATE TABLE feedback_ids_by_seq (
    seq        INTEGER PRIMARY KEY,              -- the journal entry of the step
    model_id   INTEGER NOT NULL REFERENCES models (id),
    request_id TEXT    NOT NULL,
    body_hash  INTEGER NOT NULL,                 -- hash of the request's tensors: same id,
                                                 -- other body is a 409
    answer     TEXT    NOT NULL,                 -- the JSON body answered
    created_at INTEGER NOT NULL                  -- Unix ms
);
INSERT OR REPLACE INTO feedback_ids_by_seq (seq, model_id, request_id, body_hash, answer, created_at)
    SELECT seq, model_id, request_id, body_hash, answer, created_at FROM feedback_ids ORDER BY seq;
DROP TABLE feedback_ids;
ALTER TABLE feedback_ids_by_seq RENAME TO feedback_ids;
