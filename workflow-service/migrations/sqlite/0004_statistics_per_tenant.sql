-- no-transaction
-- Statistics per tenant: a template's execution_count and success_count, as a tenant reads them,
-- are that tenant's own, and a tenant's own workflow counts only its own executions. They were
-- one pooled pair per workflow (workflows.execution_count/success_count), which every tenant of
-- a template read and added to; they are now one row per (workflow, tenant), read by a join on
-- the caller's tenant, and the pooled columns are dropped.
--
-- SQLite drops no column that a CHECK constraint names: the workflows table is rebuilt (SQLite's
-- documented twelve steps). Foreign keys are off meanwhile, or dropping the old table would
-- cascade to the executions and statistics that reference it; that needs to be outside a
-- transaction, hence no-transaction above and the explicit one below.
PRAGMA foreign_keys = OFF;
BEGIN;
CREATE TABLE workflow_statistics (
    workflow_id     TEXT NOT NULL REFERENCES workflows (id) ON DELETE CASCADE,
    tenant_id       TEXT NOT NULL,
    execution_count INTEGER NOT NULL DEFAULT 0 CHECK (execution_count >= 0),
    success_count   INTEGER NOT NULL DEFAULT 0 CHECK (success_count >= 0 AND success_count <= execution_count),
    PRIMARY KEY (workflow_id, tenant_id)
);

-- Existing counts, losing none: each tenant's from the executions recorded for it...
INSERT INTO workflow_statistics (workflow_id, tenant_id, execution_count, success_count)
    SELECT workflow_id, tenant_id, count(*), sum(CASE WHEN succeeded THEN 1 ELSE 0 END)
    FROM workflow_executions
    GROUP BY workflow_id, tenant_id;

-- ...and what the pooled figures hold beyond every recorded execution (there should be nothing,
-- but a count is never lost) goes to the workflow's owner: a tenant's own workflow keeps its
-- stored figures when they are larger; a template's unattributable rest is kept under the
-- library's tenant '' (which no caller reads as).
INSERT INTO workflow_statistics (workflow_id, tenant_id, execution_count, success_count)
    SELECT w.id, w.tenant_id,
           max(w.execution_count - coalesce(r.executions, 0), 0),
           min(max(w.success_count - coalesce(r.successes, 0), 0),
               max(w.execution_count - coalesce(r.executions, 0), 0))
    FROM workflows w
    LEFT JOIN (SELECT workflow_id, count(*) AS executions, sum(CASE WHEN succeeded THEN 1 ELSE 0 END) AS successes
               FROM workflow_executions GROUP BY workflow_id) r ON r.workflow_id = w.id
    WHERE w.execution_count > coalesce(r.executions, 0) OR w.success_count > coalesce(r.successes, 0)
ON CONFLICT (workflow_id, tenant_id) DO UPDATE SET
    execution_count = workflow_statistics.execution_count + excluded.execution_count,
    success_count = min(workflow_statistics.success_count + excluded.success_count,
                        workflow_statistics.execution_count + excluded.execution_count);

DROP TABLE IF EXISTS workflows_rebuilt;
CREATE TABLE workflows_rebuilt (
    id          TEXT PRIMARY KEY,
    tenant_id   TEXT NOT NULL,
    name        TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    category    TEXT NOT NULL CHECK (category IN ('content_generation', 'ab_testing',
                    'audience_intelligence', 'budget_optimization', 'analytics_automation')),
    config      TEXT NOT NULL,
    status      TEXT NOT NULL CHECK (status IN ('draft', 'active', 'archived')),
    is_template BOOLEAN NOT NULL DEFAULT FALSE,
    version     INTEGER NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at  TEXT NOT NULL,
    updated_at  TEXT NOT NULL,
    name_folded TEXT,
    CHECK (is_template = (tenant_id = ''))
);
INSERT INTO workflows_rebuilt (id, tenant_id, name, description, category, config, status, is_template, version,
                               created_at, updated_at, name_folded)
    SELECT id, tenant_id, name, description, category, config, status, is_template, version, created_at, updated_at,
           name_folded
    FROM workflows;
DROP TABLE workflows;
ALTER TABLE workflows_rebuilt RENAME TO workflows;
CREATE INDEX workflows_tenant_name ON workflows (tenant_id, name, id);
COMMIT;
PRAGMA foreign_keys = ON;
