-- 0004_repl.sql — replication (SPEC §7, --replicate): where a snapshot's state stands in the
-- NATS JetStream stream, written with the state in the same row so the two never disagree.
--
-- snapshots.repl  NULL (never replicated), or JSON {"stream_seq":N,"origins":{"r1":12,...}}:
--                 every delta of the stream with sequence <= stream_seq is in the state, and
--                 for each origin replica the highest journal seq of its steps that is (the
--                 replica's own id: its highest step acknowledged by JetStream). A restart
--                 resumes consuming at stream_seq + 1 and skips what these marks cover.
ALTER TABLE snapshots ADD COLUMN repl TEXT;
