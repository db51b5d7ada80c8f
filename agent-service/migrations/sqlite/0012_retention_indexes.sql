-- What the retention janitor looks for, oldest first, without scanning the tables.
CREATE INDEX executions_finished ON executions (finished_at) WHERE status <> 'running';
CREATE INDEX session_messages_created ON session_messages (created_at);
CREATE INDEX run_events_created ON run_events (created_at);
