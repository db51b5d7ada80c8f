-- Statistics per tenant: a template's execution_count and success_count, as a tenant reads them,
-- are that tenant's own, and a tenant's own workflow counts only its own executions. They were
-- one pooled pair per workflow (workflows.execution_count/success_count), which every tenant of
-- a template read and added to; they are now one row per (workflow, tenant), read by a join on
-- the caller's tenant, and the pooled columns are dropped.
CREATE TABLE workflow_statistics (
    workflow_id     uuid NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    tenant_id       TEXT NOT NULL,
    execution_count BIGINT NOT NULL DEFAULT 0 CHECK (execution_count >= 0),
    success_count   BIGINT NOT NULL DEFAULT 0 CHECK (success_count >= 0 AND success_count <= execution_count),
    PRIMARY KEY (workflow_id, tenant_id)
);

-- Existing counts, losing none: each tenant's from the executions recorded for it...
INSERT INTO workflow_statistics (workflow_id, tenant_id, execution_count, success_count)
    SELECT workflow_id, tenant_id, count(*), count(*) FILTER (WHERE succeeded)
    FROM workflow_executions
    GROUP BY workflow_id, tenant_id;

-- ...and what the pooled figures hold beyond every recorded execution (there should be nothing,
-- but a count is never lost) goes to the workflow's owner: a tenant's own workflow keeps its
-- stored figures when they are larger; a template's unattributable rest is kept under the
-- library's tenant '' (which no caller reads as).
INSERT INTO workflow_statistics (workflow_id, tenant_id, execution_count, success_count)
    SELECT w.id, w.tenant_id,
           GREATEST(w.execution_count - COALESCE(r.executions, 0), 0),
           LEAST(GREATEST(w.success_count - COALESCE(r.successes, 0), 0),
                 GREATEST(w.execution_count - COALESCE(r.executions, 0), 0))
    FROM workflows w
    LEFT JOIN (SELECT workflow_id, count(*) AS executions, count(*) FILTER (WHERE succeeded) AS successes
               FROM workflow_executions GROUP BY workflow_id) r ON r.workflow_id = w.id
    WHERE w.execution_count > COALESCE(r.executions, 0) OR w.success_count > COALESCE(r.successes, 0)
ON CONFLICT (workflow_id, tenant_id) DO UPDATE SET
    execution_count = workflow_statistics.execution_count + excluded.execution_count,
    success_count = LEAST(workflow_statistics.success_count + excluded.success_count,
                          workflow_statistics.execution_count + excluded.execution_count);

ALTER TABLE workflows DROP COLUMN execution_count, DROP COLUMN success_count;

-- A change of statistics is announced like a change of the definition (migration 0002), with
-- the tenant whose figures changed as payload: a record on a template drops what is cached for
-- that tenant only, on every replica.
CREATE FUNCTION workflow_statistics_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('engarde_workflow_changes', OLD.tenant_id);
    ELSE
        PERFORM pg_notify('engarde_workflow_changes', NEW.tenant_id);
        IF TG_OP = 'UPDATE' AND OLD.tenant_id <> NEW.tenant_id THEN
            PERFORM pg_notify('engarde_workflow_changes', OLD.tenant_id);
        END IF;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER workflow_statistics_notify_change
    AFTER INSERT OR UPDATE OR DELETE ON workflow_statistics
    FOR EACH ROW EXECUTE FUNCTION workflow_statistics_notify_change();

CREATE TRIGGER workflow_statistics_notify_truncate
    AFTER TRUNCATE ON workflow_statistics
    FOR EACH STATEMENT EXECUTE FUNCTION workflows_notify_truncate();
