-- Whether the agent's workflow snapshot has a scheduled trigger, written with the snapshot, so
-- that the scheduler reads only such agents instead of decoding every active agent's snapshot
-- every pass. Rows from before this column say TRUE ("may have one"): the scheduler decodes
-- them once and clears it where there is none.
ALTER TABLE agents ADD COLUMN scheduled INTEGER NOT NULL DEFAULT 1;
CREATE INDEX agents_scheduled_active ON agents (id) WHERE status = 'active' AND scheduled = TRUE;
