-- Every committed change to a workflow is announced on the channel `engarde_workflow_changes`,
-- with the owning tenant as payload ('' for the template library), so that each replica can drop
-- what it has cached for that tenant. A trigger rather than a call in each write: nothing that
-- changes the table (a new code path, an operator's UPDATE) can forget to announce it.
-- PostgreSQL delivers the notification when the transaction commits, and folds duplicates.
CREATE FUNCTION workflows_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
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

CREATE TRIGGER workflows_notify_change
    AFTER INSERT OR UPDATE OR DELETE ON workflows
    FOR EACH ROW EXECUTE FUNCTION workflows_notify_change();

-- A TRUNCATE fires no row trigger: it announces '*', everything.
CREATE FUNCTION workflows_notify_truncate() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('engarde_workflow_changes', '*');
    RETURN NULL;
END
$$;

CREATE TRIGGER workflows_notify_truncate
    AFTER TRUNCATE ON workflows
    FOR EACH STATEMENT EXECUTE FUNCTION workflows_notify_truncate();
