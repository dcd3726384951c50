-- 0002_indexes.sql — indexes for the per-model queries: newest snapshot, listing and
-- retention scan one model's snapshots by id; a restart looks a version up by file hash.
CREATE INDEX snapshots_by_model ON snapshots (model_id, id);
CREATE INDEX versions_by_file ON versions (model_id, file_hash);
