-- Workflow definitions: the built-in library (tenant_id '' and is_template) and tenants' own.
CREATE TABLE workflows (
    id              TEXT PRIMARY KEY,
    tenant_id       TEXT NOT NULL,
    name            TEXT NOT NULL,
    description     TEXT NOT NULL DEFAULT '',
    category        TEXT NOT NULL CHECK (category IN ('content_generation', 'ab_testing',
                        'audience_intelligence', 'budget_optimization', 'analytics_automation')),
    config          TEXT NOT NULL,
    status          TEXT NOT NULL CHECK (status IN ('draft', 'active', 'archived')),
    is_template     BOOLEAN NOT NULL DEFAULT FALSE,
    execution_count INTEGER NOT NULL DEFAULT 0 CHECK (execution_count >= 0),
    success_count   INTEGER NOT NULL DEFAULT 0 CHECK (success_count >= 0 AND success_count <= execution_count),
    version         INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at      TEXT NOT NULL,
    updated_at      TEXT NOT NULL,
    CHECK (is_template = (tenant_id = ''))
);
CREATE INDEX workflows_tenant_name ON workflows (tenant_id, name, id);

-- One row per execution reported by agent-service: the key that makes counting exactly-once.
CREATE TABLE workflow_executions (
    execution_id TEXT PRIMARY KEY,
    workflow_id  TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    tenant_id    TEXT NOT NULL,
    succeeded    BOOLEAN NOT NULL,
    recorded_at  TEXT NOT NULL
);
CREATE INDEX workflow_executions_workflow ON workflow_executions (workflow_id);

-- Answers of mutating calls that carried a request_id.
CREATE TABLE idempotency_keys (
    tenant_id   TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    response    TEXT,
    created_at  TEXT NOT NULL,
    PRIMARY KEY (tenant_id, request_id)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
