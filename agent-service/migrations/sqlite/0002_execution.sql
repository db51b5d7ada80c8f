-- Langflow linkage: where an agent's flow came from decides whether deleting the agent deletes it.
ALTER TABLE agents ADD COLUMN flow_origin TEXT NOT NULL DEFAULT ''
    CHECK (flow_origin IN ('', 'generated', 'uploaded', 'linked'));
-- The feedback summary, kept beside the counters so that reading an agent reads one row.
ALTER TABLE agents ADD COLUMN feedback_count INTEGER NOT NULL DEFAULT 0 CHECK (feedback_count >= 0);
ALTER TABLE agents ADD COLUMN feedback_score_sum INTEGER NOT NULL DEFAULT 0 CHECK (feedback_score_sum >= 0);

-- Every execution of an agent: written RUNNING before Langflow is called, finished after.
CREATE TABLE executions (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    agent_id    TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    session_id  TEXT NOT NULL,
    step_id     TEXT NOT NULL DEFAULT '',
    input       TEXT NOT NULL,
    output      TEXT NOT NULL DEFAULT '',
    status      TEXT NOT NULL CHECK (status IN ('running', 'succeeded', 'failed')),
    error       TEXT NOT NULL DEFAULT '',
    latency_ms  REAL NOT NULL DEFAULT 0,
    -- Why it failed, as the gRPC code it was answered with (and is answered again on a retry):
    -- 'unavailable', 'deadline_exceeded' or 'failed_precondition'; empty unless failed.
    error_code  TEXT NOT NULL DEFAULT ''
                CHECK (error_code IN ('', 'unavailable', 'deadline_exceeded', 'failed_precondition')),
    -- While running: where its outcome is to be reported (the agent's source workflow, if any) and
    -- the caller's authorization header to report it with; moved to execution_reports when it
    -- finishes (by its own run, or by the janitor if the process died), then cleared.
    report_workflow_id TEXT,
    report_credentials TEXT NOT NULL DEFAULT '',
    -- An execution started with a request_id answers that id's retries (one execution per id).
    request_id  TEXT,
    fingerprint TEXT,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    UNIQUE (tenant_id, request_id)
);
CREATE INDEX executions_tenant_started ON executions (tenant_id, started_at DESC, id DESC);
CREATE INDEX executions_agent_started ON executions (agent_id, started_at DESC, id DESC);
CREATE INDEX executions_running ON executions (started_at) WHERE status = 'running';

-- Conversations, per (agent, session): the listing of an agent's sessions, and the lock that
-- numbers a session's messages (finishing an execution bumps last_sequence with an upsert, which
-- serialises concurrent executions of one session). Deleted when the session is cleared.
CREATE TABLE sessions (
    agent_id        TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    session_id      TEXT NOT NULL,
    tenant_id       TEXT NOT NULL,
    message_count   INTEGER NOT NULL CHECK (message_count >= 0),
    last_sequence   INTEGER NOT NULL CHECK (last_sequence >= 0),
    last_message_at TEXT NOT NULL,
    PRIMARY KEY (agent_id, session_id)
);
CREATE INDEX sessions_agent_active ON sessions (agent_id, last_message_at DESC, session_id DESC);

-- Conversation memory, per (agent, session).
CREATE TABLE session_messages (
    agent_id     TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    session_id   TEXT NOT NULL,
    sequence     INTEGER NOT NULL,
    role         TEXT NOT NULL CHECK (role IN ('user', 'agent')),
    text         TEXT NOT NULL,
    execution_id TEXT NOT NULL,
    created_at   TEXT NOT NULL,
    PRIMARY KEY (agent_id, session_id, sequence)
);

-- Scores people gave executions.
CREATE TABLE feedback (
    id           TEXT PRIMARY KEY,
    tenant_id    TEXT NOT NULL,
    agent_id     TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE,
    execution_id TEXT NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    score        INTEGER NOT NULL CHECK (score BETWEEN 1 AND 5),
    comment      TEXT NOT NULL DEFAULT '',
    created_at   TEXT NOT NULL
);
CREATE INDEX feedback_agent_created ON feedback (agent_id, created_at DESC, id DESC);

-- The outbox of execution reports to workflow-service (RecordExecution): written in the same
-- transaction as the finished execution, delivered at least once by a background task, counted
-- once by workflow-service (idempotent by execution id). Deleted once delivered.
CREATE TABLE execution_reports (
    execution_id    TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    workflow_id     TEXT NOT NULL,
    succeeded       BOOLEAN NOT NULL,
    -- The caller's credentials (authorization header), to report with the same identity.
    credentials     TEXT NOT NULL DEFAULT '',
    attempts        INTEGER NOT NULL DEFAULT 0,
    next_attempt_at TEXT NOT NULL,
    last_error      TEXT NOT NULL DEFAULT ''
);
CREATE INDEX execution_reports_due ON execution_reports (next_attempt_at);
