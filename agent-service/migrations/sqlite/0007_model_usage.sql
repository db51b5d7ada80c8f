-- no-transaction
-- Models end to end: a rate-limited model is answered (and recorded) RESOURCE_EXHAUSTED, and the
-- tokens a model reports are kept per execution (NULL: the flow reported none) and summed per agent.
--
-- SQLite cannot change a CHECK constraint: the executions table is rebuilt (SQLite's documented
-- twelve steps). Foreign keys are off meanwhile, or dropping the old table would cascade to the
-- feedback that references it; that needs to be outside a transaction, hence no-transaction
-- above and the explicit one below.
PRAGMA foreign_keys = OFF;
BEGIN;
DROP TABLE IF EXISTS executions_rebuilt;
CREATE TABLE executions_rebuilt (
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
    error_code  TEXT NOT NULL DEFAULT ''
                CHECK (error_code IN ('', 'unavailable', 'deadline_exceeded', 'failed_precondition', 'resource_exhausted')),
    report_workflow_id TEXT,
    report_credentials TEXT NOT NULL DEFAULT '',
    request_id  TEXT,
    fingerprint TEXT,
    started_at  TEXT NOT NULL,
    finished_at TEXT,
    prompt_tokens     INTEGER CHECK (prompt_tokens >= 0),
    completion_tokens INTEGER CHECK (completion_tokens >= 0),
    UNIQUE (tenant_id, request_id)
);
INSERT INTO executions_rebuilt (id, tenant_id, agent_id, session_id, step_id, input, output, status, error,
                                latency_ms, error_code, report_workflow_id, report_credentials, request_id,
                                fingerprint, started_at, finished_at)
    SELECT id, tenant_id, agent_id, session_id, step_id, input, output, status, error, latency_ms, error_code,
           report_workflow_id, report_credentials, request_id, fingerprint, started_at, finished_at
    FROM executions;
DROP TABLE executions;
ALTER TABLE executions_rebuilt RENAME TO executions;
CREATE INDEX executions_tenant_started ON executions (tenant_id, started_at DESC, id DESC);
CREATE INDEX executions_agent_started ON executions (agent_id, started_at DESC, id DESC);
CREATE INDEX executions_running ON executions (started_at) WHERE status = 'running';
ALTER TABLE agents ADD COLUMN prompt_tokens INTEGER NOT NULL DEFAULT 0 CHECK (prompt_tokens >= 0);
ALTER TABLE agents ADD COLUMN completion_tokens INTEGER NOT NULL DEFAULT 0 CHECK (completion_tokens >= 0);
COMMIT;
PRAGMA foreign_keys = ON;
