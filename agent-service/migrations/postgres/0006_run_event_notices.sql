-- Every committed run event is announced on the channel `engarde_run_events`, with the run's id
-- as payload, so that WatchRun's streams in every process wake when their run moves instead of
-- polling the database. A trigger rather than a call beside each INSERT: no code path that
-- appends an event can forget to announce it. PostgreSQL delivers the notification when the
-- transaction commits (never for one rolled back), and folds a transaction's duplicates.
CREATE FUNCTION run_events_announce() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('engarde_run_events', NEW.run_id);
    RETURN NULL;
END
$$;

CREATE TRIGGER run_events_announce
    AFTER INSERT ON run_events
    FOR EACH ROW EXECUTE FUNCTION run_events_announce();
