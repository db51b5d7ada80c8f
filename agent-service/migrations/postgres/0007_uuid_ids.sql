-- Ids as PostgreSQL's native uuid (16 bytes, compared and indexed as such) rather than their
-- text. SQLite has no such type and keeps TEXT. Converted in place, one rewrite per table: the
-- foreign keys go while both of their sides change type and come back exactly as they were.
-- Session ids, tenant ids, request ids and Langflow's flow ids stay text: they are not ours.
ALTER TABLE provisioned_workflows DROP CONSTRAINT provisioned_workflows_agent_id_fkey;
ALTER TABLE executions DROP CONSTRAINT executions_agent_id_fkey;
ALTER TABLE sessions DROP CONSTRAINT sessions_agent_id_fkey;
ALTER TABLE session_messages DROP CONSTRAINT session_messages_agent_id_fkey;
ALTER TABLE feedback DROP CONSTRAINT feedback_agent_id_fkey;
ALTER TABLE feedback DROP CONSTRAINT feedback_execution_id_fkey;
ALTER TABLE runs DROP CONSTRAINT runs_agent_id_fkey;
ALTER TABLE run_steps DROP CONSTRAINT run_steps_run_id_fkey;
ALTER TABLE run_events DROP CONSTRAINT run_events_run_id_fkey;
ALTER TABLE reviews DROP CONSTRAINT reviews_run_id_fkey;
ALTER TABLE schedule_ticks DROP CONSTRAINT schedule_ticks_agent_id_fkey;

ALTER TABLE agents
    ALTER COLUMN id TYPE uuid USING id::uuid,
    ALTER COLUMN source_workflow_id TYPE uuid USING source_workflow_id::uuid;
ALTER TABLE provisioned_workflows
    ALTER COLUMN workflow_id TYPE uuid USING workflow_id::uuid,
    ALTER COLUMN agent_id TYPE uuid USING agent_id::uuid;
ALTER TABLE executions
    ALTER COLUMN id TYPE uuid USING id::uuid,
    ALTER COLUMN agent_id TYPE uuid USING agent_id::uuid,
    ALTER COLUMN report_workflow_id TYPE uuid USING report_workflow_id::uuid;
ALTER TABLE sessions
    ALTER COLUMN agent_id TYPE uuid USING agent_id::uuid;
ALTER TABLE session_messages
    ALTER COLUMN agent_id TYPE uuid USING agent_id::uuid,
    ALTER COLUMN execution_id TYPE uuid USING execution_id::uuid;
ALTER TABLE feedback
    ALTER COLUMN id TYPE uuid USING id::uuid,
    ALTER COLUMN agent_id TYPE uuid USING agent_id::uuid,
    ALTER COLUMN execution_id TYPE uuid USING execution_id::uuid;
ALTER TABLE execution_reports
    ALTER COLUMN execution_id TYPE uuid USING execution_id::uuid,
    ALTER COLUMN workflow_id TYPE uuid USING workflow_id::uuid;
ALTER TABLE runs
    ALTER COLUMN id TYPE uuid USING id::uuid,
    ALTER COLUMN agent_id TYPE uuid USING agent_id::uuid;
ALTER TABLE run_steps
    ALTER COLUMN run_id TYPE uuid USING run_id::uuid;
ALTER TABLE run_events
    ALTER COLUMN run_id TYPE uuid USING run_id::uuid;
ALTER TABLE reviews
    ALTER COLUMN id TYPE uuid USING id::uuid,
    ALTER COLUMN run_id TYPE uuid USING run_id::uuid,
    ALTER COLUMN agent_id TYPE uuid USING agent_id::uuid;
ALTER TABLE schedule_ticks
    ALTER COLUMN agent_id TYPE uuid USING agent_id::uuid,
    ALTER COLUMN run_id TYPE uuid USING run_id::uuid;

ALTER TABLE provisioned_workflows ADD CONSTRAINT provisioned_workflows_agent_id_fkey
    FOREIGN KEY (agent_id) REFERENCES agents (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED;
ALTER TABLE executions ADD CONSTRAINT executions_agent_id_fkey
    FOREIGN KEY (agent_id) REFERENCES agents (id) ON DELETE CASCADE;
ALTER TABLE sessions ADD CONSTRAINT sessions_agent_id_fkey
    FOREIGN KEY (agent_id) REFERENCES agents (id) ON DELETE CASCADE;
ALTER TABLE session_messages ADD CONSTRAINT session_messages_agent_id_fkey
    FOREIGN KEY (agent_id) REFERENCES agents (id) ON DELETE CASCADE;
ALTER TABLE feedback ADD CONSTRAINT feedback_agent_id_fkey
    FOREIGN KEY (agent_id) REFERENCES agents (id) ON DELETE CASCADE;
ALTER TABLE feedback ADD CONSTRAINT feedback_execution_id_fkey
    FOREIGN KEY (execution_id) REFERENCES executions (id) ON DELETE CASCADE;
ALTER TABLE runs ADD CONSTRAINT runs_agent_id_fkey
    FOREIGN KEY (agent_id) REFERENCES agents (id) ON DELETE CASCADE;
ALTER TABLE run_steps ADD CONSTRAINT run_steps_run_id_fkey
    FOREIGN KEY (run_id) REFERENCES runs (id) ON DELETE CASCADE;
ALTER TABLE run_events ADD CONSTRAINT run_events_run_id_fkey
    FOREIGN KEY (run_id) REFERENCES runs (id) ON DELETE CASCADE;
ALTER TABLE reviews ADD CONSTRAINT reviews_run_id_fkey
    FOREIGN KEY (run_id) REFERENCES runs (id) ON DELETE CASCADE;
ALTER TABLE schedule_ticks ADD CONSTRAINT schedule_ticks_agent_id_fkey
    FOREIGN KEY (agent_id) REFERENCES agents (id) ON DELETE CASCADE;

-- The announcement's payload is text.
CREATE OR REPLACE FUNCTION run_events_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('engarde_run_events', NEW.run_id::text);
    RETURN NULL;
END
$$;
