-- Agents of each tenant. The source workflow (owned by workflow-service) is referenced by id only
-- and snapshotted: its config is the encoded engarde.workflow.v1.WorkflowConfig protobuf.
CREATE TABLE agents (
    id                       TEXT PRIMARY KEY,
    tenant_id                TEXT NOT NULL,
    name                     TEXT NOT NULL,
    description              TEXT NOT NULL DEFAULT '',
    agent_type               TEXT NOT NULL CHECK (agent_type IN ('content_generation', 'copy_generation',
                                 'audience_analysis', 'campaign_optimization', 'analytics_reporting', 'walker')),
    status                   TEXT NOT NULL CHECK (status IN ('draft', 'deployed', 'active', 'paused', 'error')),
    status_reason            TEXT NOT NULL DEFAULT '',
    langflow_workflow_id     TEXT NOT NULL DEFAULT '',
    langflow_deployment_id   TEXT NOT NULL DEFAULT '',
    source_workflow_id       TEXT,
    source_workflow_version  BIGINT,
    source_workflow_name     TEXT,
    source_workflow_category TEXT CHECK (source_workflow_category IN ('content_generation', 'ab_testing',
                                 'audience_intelligence', 'budget_optimization', 'analytics_automation')),
    source_workflow_config   BYTEA,
    configuration            JSONB NOT NULL,
    capabilities             JSONB NOT NULL,
    total_executions         BIGINT NOT NULL DEFAULT 0 CHECK (total_executions >= 0),
    successful_executions    BIGINT NOT NULL DEFAULT 0
                                 CHECK (successful_executions >= 0 AND successful_executions <= total_executions),
    average_response_time_ms DOUBLE PRECISION NOT NULL DEFAULT 0 CHECK (average_response_time_ms >= 0),
    version                  BIGINT NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at               TIMESTAMPTZ NOT NULL,
    updated_at               TIMESTAMPTZ NOT NULL,
    -- A snapshot is all there or not at all (stand-alone agents have none).
    CHECK ((source_workflow_id IS NULL) = (source_workflow_version IS NULL)
       AND (source_workflow_id IS NULL) = (source_workflow_name IS NULL)
       AND (source_workflow_id IS NULL) = (source_workflow_category IS NULL)
       AND (source_workflow_id IS NULL) = (source_workflow_config IS NULL))
);
CREATE INDEX agents_tenant_created ON agents (tenant_id, created_at, id);
CREATE INDEX agents_tenant_workflow ON agents (tenant_id, source_workflow_id);

-- The claim that makes provisioning exactly-once: a workflow that has an agent has a row here,
-- inserted in the same transaction as the agent (ON CONFLICT DO NOTHING). Concurrent
-- provisionings of one workflow race on this primary key; the loser skips it. The claim is
-- inserted before its agent, so the foreign key is checked at commit.
CREATE TABLE provisioned_workflows (
    tenant_id   TEXT NOT NULL,
    workflow_id TEXT NOT NULL,
    agent_id    TEXT NOT NULL REFERENCES agents (id) ON DELETE CASCADE DEFERRABLE INITIALLY DEFERRED,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, workflow_id)
);
CREATE INDEX provisioned_workflows_agent ON provisioned_workflows (agent_id);

-- Answers of mutating calls that carried a request_id.
CREATE TABLE idempotency_keys (
    tenant_id   TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    fingerprint TEXT NOT NULL,
    response    TEXT,
    created_at  TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (tenant_id, request_id)
);
CREATE INDEX idempotency_keys_created ON idempotency_keys (created_at);
