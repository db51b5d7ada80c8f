-- Every committed change to what an agent runs with is announced on the channel
-- `engarde_agent_changes`, with the agent's id as payload, so that each process's cache of the
-- agents its executions run (`storage::agent_cache`) drops what another process changed.
-- "What an agent runs with" is every write that moves its `version`, and its deletion: every
-- change of its content or status does (the etag is the version). The statistics' updates (one
-- per finish) and the scheduler's bookkeeping leave `version` alone, change nothing a run reads,
-- and are not announced: `UPDATE OF version` keeps the trigger from even being called for them.
CREATE FUNCTION agents_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('engarde_agent_changes', OLD.id::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER agents_announce
    AFTER UPDATE OF version OR DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION agents_announce();

-- A TRUNCATE names no row: everything may have changed.
CREATE FUNCTION agents_announce_everything() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('engarde_agent_changes', '*');
    RETURN NULL;
END
$$;

CREATE TRIGGER agents_announce_truncate
    AFTER TRUNCATE ON agents
    FOR EACH STATEMENT EXECUTE FUNCTION agents_announce_everything();
