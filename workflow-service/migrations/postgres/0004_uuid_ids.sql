-- Ids as PostgreSQL's native uuid (16 bytes, compared and indexed as such) rather than their
-- text. SQLite has no such type and keeps TEXT. Converted in place; the foreign key goes while
-- both of its sides change type and comes back as it was. An execution id stays text: it is
-- the caller's (RecordExecution takes any printable id).
ALTER TABLE workflow_executions DROP CONSTRAINT workflow_executions_workflow_id_fkey;
ALTER TABLE workflows ALTER COLUMN id TYPE uuid USING id::uuid;
ALTER TABLE workflow_executions ALTER COLUMN workflow_id TYPE uuid USING workflow_id::uuid;
ALTER TABLE workflow_executions ADD CONSTRAINT workflow_executions_workflow_id_fkey
    FOREIGN KEY (workflow_id) REFERENCES workflows (id) ON DELETE CASCADE;
